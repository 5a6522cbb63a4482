package viewer

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// param says what one request parameter may hold. Every API endpoint names
// the parameters it takes; anything else, a parameter given twice, a value
// that is not UTF-8, holds a control character (NUL included), is too long
// or has the wrong shape is answered 400 before a handler sees it, so no
// such value reaches Postgres, NATS or a log line unquoted.
type param struct {
	// max is the longest value accepted, in bytes.
	max int
	// shape, if set, is what a non-empty value must match whole; without
	// one any printable text is accepted.
	shape *regexp.Regexp
	// want names what is expected, for the answer.
	want string
}

// The parameters the endpoints take. Their shapes are the ones the schema
// gives the values (organizations.slug, devices.external_id,
// device_type_topics.suffix), so a value of another shape could match
// nothing anyway.
var (
	orgParam = param{max: 63, shape: regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`),
		want: "an organization slug (letters, digits, - and _)"}
	deviceParam = param{max: 200, shape: regexp.MustCompile(`^[A-Za-z0-9_:-]+$`),
		want: "a device's external id or uuid (letters, digits, -, _ and :)"}
	topicParam = param{max: 128, shape: regexp.MustCompile(`^[A-Za-z0-9_-]+$`),
		want: "a topic suffix (letters, digits, - and _)"}
	// refParam is free text: a device's own message id may hold any
	// printable character. 512 bytes hold the longest dedupe key of a
	// device message id the gateway accepts.
	refParam       = param{max: 512, want: "a message id, a dedupe key or a device message id"}
	minutesParam   = param{max: 4, shape: regexp.MustCompile(`^[0-9]+$`), want: "whole minutes, 1 to 1440"}
	lastEventParam = param{max: 64, shape: regexp.MustCompile(`^[A-Za-z0-9]+-[0-9]{1,20}$`), want: "an event id the viewer sent"}
)

// oneOf is a parameter that takes one of a few words.
func oneOf(words ...string) param {
	return param{
		max:   16,
		shape: regexp.MustCompile(`^(` + strings.Join(words, "|") + `)$`),
		want:  strings.Join(words, " or "),
	}
}

// The query parameters of each endpoint; noParams for those that take none.
var (
	noParams     = map[string]param{}
	eventsParams = map[string]param{
		"org": orgParam, "device": deviceParam, "topic": topicParam,
		"raw": oneOf("0", "1", "true", "false"), "last_event_id": lastEventParam,
	}
	deviceParams = map[string]param{"minutes": minutesParam, "history": oneOf("0", "1")}
	traceParams  = map[string]param{"ref": refParam}
	// devicePath is the path parameter of /api/devices/{device}.
	devicePath = map[string]param{"device": deviceParam}
)

// check reports what is wrong with the value v of the parameter name.
func (p param) check(name, v string) error {
	switch {
	case !utf8.ValidString(v):
		return badRequest("%s: not valid UTF-8", name)
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return badRequest("%s: holds a control character", name)
	case len(v) > p.max:
		return badRequest("%s: longer than %d bytes", name, p.max)
	case v != "" && p.shape != nil && !p.shape.MatchString(v):
		return badRequest("%s: want %s", name, p.want)
	}
	return nil
}

// checkQuery reports the first thing wrong with a raw query string for an
// endpoint that takes the parameters allowed, in name order so the answer
// does not change from one try to the next.
func checkQuery(raw string, allowed map[string]param) error {
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return badRequest("the query string is not well-formed")
	}
	names := make([]string, 0, len(vals))
	for name := range vals {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		p, ok := allowed[name]
		if !ok {
			if len(allowed) == 0 {
				return badRequest("this endpoint takes no parameter, and got %s", paramName(name))
			}
			return badRequest("unknown parameter %s", paramName(name))
		}
		if len(vals[name]) > 1 {
			return badRequest("%s: given more than once", name)
		}
		if err := p.check(name, vals[name][0]); err != nil {
			return err
		}
	}
	return nil
}

// plainName is a parameter name that can be said back as it is.
var plainName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)

// paramName quotes a parameter name the request sent, unless it is not
// one that can be said back safely.
func paramName(name string) string {
	if plainName.MatchString(name) {
		return strconv.Quote(name)
	}
	return "with an unusable name"
}

// checked answers 400 to a request with query or path parameters other
// than the ones next takes, in the shape it takes them; next reads them
// with r.URL.Query() and r.PathValue as usual.
func (s *Server) checked(query, path map[string]param, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := checkQuery(r.URL.RawQuery, query); err != nil {
			s.writeError(w, r, err)
			return
		}
		for name, p := range path {
			v := r.PathValue(name)
			if v == "" {
				s.writeError(w, r, badRequest("%s: missing", name))
				return
			}
			if err := p.check(name, v); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		next(w, r)
	}
}

// decodeBody reads a change request's JSON body, one object and nothing
// after it, into v. Its errors say what is wrong in the request's terms,
// not the decoder's.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bodyError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return bodyError(err)
		}
		return badRequest("body: want one JSON object and nothing after it")
	}
	return nil
}

// bodyError turns a decoding error into a 400 that names the field at
// fault without repeating what was sent.
func bodyError(err error) error {
	var (
		tooBig  *http.MaxBytesError
		syntax  *json.SyntaxError
		mistype *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &tooBig):
		return badRequest("body: larger than %d KiB", maxBody>>10)
	case errors.Is(err, io.EOF):
		return badRequest("body: empty; want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("body: cut short; want a JSON object")
	case errors.As(err, &syntax):
		return badRequest("body: not valid JSON (at byte %d)", syntax.Offset)
	case errors.As(err, &mistype) && mistype.Field != "":
		return badRequest("body: %s: want %s", mistype.Field, jsonKind(mistype.Type))
	case errors.As(err, &mistype):
		return badRequest("body: want a JSON object")
	}
	// The decoder's only untyped error here is an unknown field.
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if unq, uerr := strconv.Unquote(name); uerr == nil {
			name = unq
		}
		return badRequest("body: unknown field %s", paramName(name))
	}
	return badRequest("body: not the JSON object this request takes")
}

// jsonKind names the JSON a Go type is decoded from.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "a number"
	}
	return "another kind of value"
}
