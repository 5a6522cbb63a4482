package validator

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"time"
)

// recordedAtKeys are tried in this order; the first that parses wins.
var recordedAtKeys = []string{"recorded_at", "timestamp", "ts", "time"}

// msThreshold separates Unix seconds from milliseconds: 1e12 seconds is
// the year 33658, 1e12 milliseconds is September 2001.
const msThreshold = 1e12

// minUnix is a little before year 1 in Unix seconds.
const minUnix = -1e11

// RecordedAt finds the recorded time in a payload, if any: top-level
// "recorded_at", "timestamp", "ts" or "time", tried in that order, as an
// RFC 3339 string or Unix seconds or milliseconds (numbers above 1e12 are
// milliseconds), given as a number or a string of one. A field that does
// not parse, or falls outside the years 1 to 9999, is passed over for the
// next. ok is false when none is usable or the payload is not a JSON
// object. The time is in UTC.
func RecordedAt(payload []byte) (t time.Time, ok bool) {
	fields, ok := topLevel(payload, recordedAtKeys)
	if !ok {
		return time.Time{}, false
	}
	for _, raw := range fields {
		if raw == nil {
			continue
		}
		if t, ok := parseTime(raw); ok {
			return t, true
		}
	}
	return time.Time{}, false
}

func parseTime(raw []byte) (time.Time, bool) {
	s := string(raw)
	if raw[0] == '"' {
		var ok bool
		if s, ok = jsonString(raw); !ok {
			return time.Time{}, false
		}
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return inRange(t)
		}
		// A quoted number counts only when it is a JSON number: ParseFloat
		// alone would also take "Inf", "0x1p4" and "1_000".
		if s == "" || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) || !json.Valid([]byte(s)) {
			return time.Time{}, false
		}
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		switch {
		case i < minUnix:
			// Before year 1, and far enough that time.Unix could wrap.
			return time.Time{}, false
		case i > msThreshold:
			return inRange(time.UnixMilli(i))
		}
		return inRange(time.Unix(i, 0))
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) {
		return time.Time{}, false
	}
	// The bounds keep the conversions inside int64; inRange does the
	// precise check.
	if f < minUnix || f > 1e15 {
		return time.Time{}, false
	}
	whole, frac := math.Modf(f)
	if f > msThreshold {
		return inRange(time.UnixMilli(int64(whole)).Add(time.Duration(math.Round(frac * 1e6))))
	}
	return inRange(time.Unix(int64(whole), int64(math.Round(frac*1e9))))
}

// inRange refuses times RFC 3339 and protobuf timestamps cannot carry.
func inRange(t time.Time) (time.Time, bool) {
	t = t.UTC()
	if t.Year() < 1 || t.Year() > 9999 {
		return time.Time{}, false
	}
	return t, true
}

func jsonString(raw []byte) (string, bool) {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), true
	}
	var s string
	return s, json.Unmarshal(raw, &s) == nil
}

// topLevel returns the raw value of each of keys in a payload's top-level
// object, nil where absent or null; of duplicate keys the last counts, as
// when the payload is decoded. It walks only the top level, so it stays
// cheap next to Check's full decode.
func topLevel(payload []byte, keys []string) ([][]byte, bool) {
	if !json.Valid(payload) {
		return nil, false
	}
	// Valid JSON from here on: the walk need not check the grammar.
	i := skipSpace(payload, 0)
	if payload[i] != '{' {
		return nil, false
	}
	out := make([][]byte, len(keys))
	for i = skipSpace(payload, i+1); payload[i] != '}'; i = skipSpace(payload, i) {
		if payload[i] == ',' {
			i = skipSpace(payload, i+1)
		}
		keyEnd := valueEnd(payload, i)
		rawKey := payload[i:keyEnd]
		i = skipSpace(payload, skipSpace(payload, keyEnd)+1)
		end := valueEnd(payload, i)
		if k := keyIndex(rawKey, keys); k >= 0 {
			out[k] = payload[i:end]
			if string(out[k]) == "null" {
				out[k] = nil
			}
		}
		i = end
	}
	return out, true
}

func keyIndex(rawKey []byte, keys []string) int {
	inner := rawKey[1 : len(rawKey)-1]
	if bytes.IndexByte(inner, '\\') >= 0 {
		// Escaped keys ("\u0074s") are rare; only they pay for decoding.
		key, ok := jsonString(rawKey)
		if !ok {
			return -1
		}
		inner = []byte(key)
	}
	for k, want := range keys {
		if string(inner) == want {
			return k
		}
	}
	return -1
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// valueEnd returns the offset just after the valid JSON value at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		for i++; b[i] != '"'; i++ {
			if b[i] == '\\' {
				i++
			}
		}
		return i + 1
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch b[i] {
			case '"':
				i = valueEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
		i++
	}
	return i
}
