package viewer

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
)

// rawDo sends a request whose path and query are used as written (hostile
// escapes included) and returns the status and the body.
func (e *env) rawDo(method, pathAndQuery, token string, body []byte) (int, string) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.url+pathAndQuery, bytes.NewReader(body))
	if err != nil {
		e.t.Fatalf("%s: %v", pathAndQuery, err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, pathAndQuery, err)
	}
	defer res.Body.Close()
	if res.Header.Get("Content-Type") == "text/event-stream" {
		// A live connection that was accepted lasts: do not wait for its end.
		return res.StatusCode, "(a live stream)"
	}
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// leaks are what no answer to a browser may carry: Postgres errors, Go
// runtime and library messages, the bytes a hostile request sent.
var leaks = regexp.MustCompile(`SQLSTATE|ERROR:|invalid byte sequence|relation "|pgx|runtime error|goroutine|invalid UUID|json: |\\u0000|\\ufffd|\\x00`)

// checkOneLine fails unless body is a JSON object {"error": "..."} whose
// error is one line and leaks nothing.
func checkOneLine(t *testing.T, what, body string) string {
	t.Helper()
	var out map[string]string
	if err := json.Unmarshal([]byte(body), &out); err != nil || len(out) != 1 || out["error"] == "" {
		t.Errorf("%s: answer %q, want {\"error\": \"...\"}", what, body)
		return ""
	}
	msg := out["error"]
	if strings.ContainsAny(msg, "\n\r") || len(msg) > 300 {
		t.Errorf("%s: error is not one short line: %q", what, msg)
	}
	if m := leaks.FindString(body); m != "" {
		t.Errorf("%s: answer leaks %q: %s", what, m, body)
	}
	return msg
}

func TestHostileParametersAreRefusedWithOneLine(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	acme := e.org("acme")
	e.device(acme, "d1")
	if err := e.srv.catalog.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 600)
	for _, path := range []string{
		// The message lookup: the one that reached Postgres.
		"/api/trace?ref=%ff%fe%00abc",
		"/api/trace?ref=abc%00",
		"/api/trace?ref=%c3%28",
		"/api/trace?ref=a%0Ab",
		"/api/trace?ref=" + long,
		"/api/trace?ref=%zz",
		"/api/trace?ref=a;b",
		"/api/trace?ref=a&ref=b",
		"/api/trace?ref=a&x=1",
		"/api/trace?%ff=1",
		// One device.
		"/api/devices/%ff%fe",
		"/api/devices/d1%00",
		"/api/devices/d%20x",
		"/api/devices/" + strings.Repeat("d", 201),
		"/api/devices/d1?minutes=%ff",
		"/api/devices/d1?minutes=1e3",
		"/api/devices/d1?minutes=99999999999999999999999",
		"/api/devices/d1?minutes=-5",
		"/api/devices/d1?history=%00",
		"/api/devices/d1?history=2",
		"/api/devices/d1?history=0&history=1",
		"/api/devices/d1?bogus=1",
		// The live connection.
		"/api/events?org=%ff",
		"/api/events?org=acme%00",
		"/api/events?org=ac%20me",
		"/api/events?device=d1%00",
		"/api/events?device=" + long,
		"/api/events?topic=t%0A",
		"/api/events?topic=" + long,
		"/api/events?raw=yes",
		"/api/events?raw=%00",
		"/api/events?last_event_id=%ff",
		"/api/events?last_event_id=" + long,
		"/api/events?org=a&org=b",
		"/api/events?nope=1",
		// Endpoints that take no parameter.
		"/api/meta?x=%ff",
		"/api/catalog?x=1",
		"/api/health?%00=1",
	} {
		status, body := e.rawDo(http.MethodGet, path, "", nil)
		if status != http.StatusBadRequest {
			t.Errorf("GET %s: %d %s, want 400", path, status, body)
			continue
		}
		checkOneLine(t, "GET "+path, body)
	}

	// Change requests: their query and their body.
	for _, tc := range []struct{ path, body string }{
		{"/api/switches?x=1", `{"switch": "pipeline.enabled", "on": true}`},
		{"/api/switches", `{"organization": "ac\u0000me", "switch": "pipeline.enabled", "on": true}`},
		{"/api/switches", "{\"organization\": \"ac\xffme\", \"switch\": \"pipeline.enabled\", \"on\": true}"},
		{"/api/switches", `{"organization": "` + long + `", "switch": "pipeline.enabled", "on": true}`},
		{"/api/switches", `{"organization": "acme", "switch": "pipeline.enabled\u0000", "on": true}`},
		{"/api/switches", `{"switch": "pipeline.enabled", "on": "yes"}`},
		{"/api/switches", `{"switch": "pipeline.enabled", "on": true, "extra": 1}`},
		{"/api/switches", `{"switch": `},
		{"/api/switches", `[]`},
		{"/api/switches", ``},
		{"/api/switches", `{"switch": "pipeline.enabled", "on": true} {"again": 1}`},
		{"/api/publish-failed/retry", `{"message_ids": ["nope"]}`},
		{"/api/publish-failed/retry", `{"message_ids": ["00000000-0000-0000-0000-00000000000\u0000"]}`},
		{"/api/publish-failed/retry", `{"message_ids": [1]}`},
		{"/api/publish-failed/retry?all=1", `{"all": true}`},
		{"/api/auth?x=%ff", ``},
	} {
		status, body := e.rawDo(http.MethodPost, tc.path, testToken, []byte(tc.body))
		if status != http.StatusBadRequest {
			t.Errorf("POST %s %q: %d %s, want 400", tc.path, tc.body, status, body)
			continue
		}
		checkOneLine(t, "POST "+tc.path+" "+tc.body, body)
	}

	// Well-formed requests still work.
	for path, want := range map[string]int{
		"/api/trace?ref=id:devices.d1.telemetry:m-1": http.StatusNotFound,
		"/api/trace?ref=%20a%20message%20id%20":      http.StatusNotFound,
		"/api/devices/d1?minutes=5&history=0":        http.StatusOK,
		"/api/devices/nope?history=1":                http.StatusNotFound,
		"/api/meta":                                  http.StatusOK,
	} {
		if status, body := e.rawDo(http.MethodGet, path, "", nil); status != want {
			t.Errorf("GET %s: %d %s, want %d", path, status, body, want)
		}
	}
}

// logCapture keeps what a logger wrote, for a test to read.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logCapture) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func TestUnexpectedFailureAnswersAnErrorID(t *testing.T) {
	t.Parallel()
	logs := &logCapture{}
	e := &env{t: t, logger: slog.New(slog.NewJSONHandler(logs, nil))}
	e.db, e.ns = testdb.New(t), testnats.New(t)
	e.nc, e.js = e.ns.Connect(t)
	e.start(testConfig())
	acme := e.org("acme")
	e.device(acme, "d1")
	if err := e.srv.catalog.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Tables the viewer reads are gone: every lookup fails in Postgres.
	e.exec(`alter table ingestion_messages rename to ingestion_messages_gone`)
	e.exec(`alter table device_telemetry_logs rename to device_telemetry_logs_gone`)
	idFormat := regexp.MustCompile(`error id ([0-9a-f]{16})`)
	for _, path := range []string{"/api/trace?ref=some-message", "/api/devices/d1"} {
		status, body := e.rawDo(http.MethodGet, path, "", nil)
		if status != http.StatusInternalServerError {
			t.Errorf("GET %s: %d %s, want 500", path, status, body)
			continue
		}
		msg := checkOneLine(t, "GET "+path, body)
		m := idFormat.FindStringSubmatch(msg)
		if m == nil {
			t.Errorf("GET %s: %q names no error id", path, msg)
			continue
		}
		// The log has the details under that id.
		found := false
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, `"error_id":"`+m[1]+`"`) && strings.Contains(line, "SQLSTATE 42P01") {
				found = true
			}
		}
		if !found {
			t.Errorf("GET %s: no log line with error id %s and the Postgres error:\n%s", path, m[1], logs)
		}
	}
}
