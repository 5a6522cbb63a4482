package viewer

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
)

// testToken is the token of the viewers the tests start with one.
const testToken = "t0ken-for-tests"

// env is a viewer under test with its Postgres and NATS.
type env struct {
	t   *testing.T
	db  *testdb.DB
	ns  *testnats.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	srv *Server
	url string
	// stop stops the viewer and returns Run's error.
	stop func() error
	// logger, if set before start, is the viewer's logger.
	logger *slog.Logger
	// gatewayAdmin is the admin address of the mesh's gateway, when the
	// env has a mesh.
	gatewayAdmin string
}

// testLogger keeps the viewer's logs out of the test output unless asked.
func testLogger() *slog.Logger {
	if os.Getenv("TELEMESH_TEST_LOG") != "" {
		l, _ := logging.New(os.Stderr, "text", "debug")
		return l
	}
	return logging.Discard()
}

// testConfig is a viewer configuration that refreshes quickly.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Token = testToken
	cfg.HealthEvery = 200 * time.Millisecond
	cfg.SlowEvery = 200 * time.Millisecond
	cfg.Heartbeat = time.Second
	cfg.ShutdownGrace = 5 * time.Second
	return cfg
}

// newEnv starts a viewer on a fresh database and NATS server. tune, if
// set, adjusts its configuration.
func newEnv(t *testing.T, tune func(*Config)) *env {
	t.Helper()
	e := &env{t: t, db: testdb.New(t), ns: testnats.New(t)}
	e.nc, e.js = e.ns.Connect(t)
	cfg := testConfig()
	if tune != nil {
		tune(&cfg)
	}
	e.start(cfg)
	return e
}

// start runs a viewer with cfg on the env's database and NATS.
func (e *env) start(cfg Config) {
	e.t.Helper()
	nc, err := nats.Connect(e.ns.URL())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	logger := e.logger
	if logger == nil {
		logger = testLogger()
	}
	srv, err := New(cfg, Deps{Pool: e.db.Pool, NATS: nc}, logger)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stopped := false
	var runErr error
	e.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(testWait):
				e.t.Fatalf("viewer did not stop within %s", testWait)
			}
		}
		return runErr
	}
	e.t.Cleanup(func() {
		if err := e.stop(); err != nil {
			e.t.Errorf("viewer Run: %v", err)
		}
	})
	e.srv, e.url = srv, "http://"+srv.Addr()
}

// exec runs one statement on the env's database.
func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Pool.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// do sends a request and decodes a JSON answer into out (when not nil). It
// returns the status.
func (e *env) do(method, path, token string, body any, out any) int {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: %v\n%s", method, path, err, data)
		}
	}
	return res.StatusCode
}

// org adds an organization with one device type and returns its id.
func (e *env) org(slug string) uuid.UUID {
	e.t.Helper()
	id := uuid.New()
	e.exec(`insert into organizations (id, slug, name) values ($1, $2, $2)`, id, slug)
	e.exec(`insert into device_types (organization_id, name) values ($1, 'sensor')`, id)
	e.exec(`insert into device_type_topics (device_type_id, suffix) select id, 'telemetry' from device_types where organization_id = $1`, id)
	return id
}

// device adds a device of the organization's type and returns its id.
func (e *env) device(org uuid.UUID, external string) uuid.UUID {
	e.t.Helper()
	id := uuid.New()
	e.exec(`insert into devices (id, organization_id, device_type_id, external_id)
		select $1, $2, id, $3 from device_types where organization_id = $2`, id, org, external)
	return id
}

// sseEvent is one server-sent event.
type sseEvent struct {
	id, kind, data string
}

// sse is a live connection read by a test.
type sse struct {
	res    *http.Response
	events chan sseEvent
	cancel context.CancelFunc
}

// openSSE connects to the live stream with the query and reads its events
// in the background.
func (e *env) openSSE(query string, header http.Header) *sse {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/api/events"+query, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		cancel()
		e.t.Fatalf("events: status %d", res.StatusCode)
	}
	s := &sse{res: res, events: make(chan sseEvent, 10000), cancel: cancel}
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.kind != "" {
					s.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.kind = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	e.t.Cleanup(s.close)
	return s
}

func (s *sse) close() {
	s.cancel()
	_ = s.res.Body.Close()
}

// next returns the next event of one of the kinds within d; ok is false
// when none came.
func (s *sse) next(d time.Duration, kinds ...string) (sseEvent, bool) {
	deadline := time.After(d)
	for {
		select {
		case ev, open := <-s.events:
			if !open {
				return sseEvent{}, false
			}
			for _, k := range kinds {
				if ev.kind == k {
					return ev, true
				}
			}
		case <-deadline:
			return sseEvent{}, false
		}
	}
}

// testWait bounds each wait for something the viewer or the mesh must do:
// generous, because on a busy machine that can take seconds, and a passing
// test never waits it out.
const testWait = 2 * time.Minute

// holds turns a condition into what [testutil.Eventually] takes.
func holds(ok bool, format string, args ...any) error {
	if ok {
		return nil
	}
	return fmt.Errorf(format, args...)
}
