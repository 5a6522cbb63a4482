package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/telemesh/telemesh/internal/logging"
)

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "telemesh_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	s, err := New("127.0.0.1:0", reg, logging.Discard(), WithPprof(true))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })

	failing := errors.New("database unreachable")
	var dbErr error
	s.AddCheck("database", func(context.Context) error { return dbErr })

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		name, path string
		setup      func()
		wantCode   int
		wantBody   string
	}{
		{name: "metrics", path: "/metrics", wantCode: 200, wantBody: "telemesh_test_total 1"},
		{name: "healthz", path: "/healthz", wantCode: 200, wantBody: "ok"},
		{name: "ready", path: "/readyz", wantCode: 200, wantBody: `"ready":true`},
		{name: "not ready", path: "/readyz", setup: func() { dbErr = failing }, wantCode: 503, wantBody: "database unreachable"},
		{name: "pprof", path: "/debug/pprof/", wantCode: 200, wantBody: "goroutine"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			code, body := get(tt.path)
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("GET %s = %d %q, want %d containing %q", tt.path, code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

// TestPprofIsOffByDefault: the admin port answers whoever reaches it, so
// without pprof asked for it serves none of it, and never the command line,
// which may carry a secret.
func TestPprofIsOffByDefault(t *testing.T) {
	tests := []struct {
		name string
		opts []Option
		want map[string]int
	}{
		{name: "default", want: map[string]int{
			"/debug/pprof/": 404, "/debug/pprof/cmdline": 404, "/debug/pprof/goroutine": 404, "/debug/pprof/symbol": 404, "/metrics": 200,
		}},
		{name: "off", opts: []Option{WithPprof(false)}, want: map[string]int{"/debug/pprof/": 404, "/debug/pprof/cmdline": 404}},
		{name: "on", opts: []Option{WithPprof(true)}, want: map[string]int{
			"/debug/pprof/": 200, "/debug/pprof/cmdline": 404, "/debug/pprof/goroutine?debug=1": 200, "/debug/pprof/symbol": 200, "/metrics": 200,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New("127.0.0.1:0", prometheus.NewRegistry(), logging.Discard(), tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			go func() { _ = s.Serve() }()
			t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
			for path, want := range tt.want {
				resp, err := http.Get("http://" + s.Addr() + path)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Errorf("GET %s = %d %.80q, want %d", path, resp.StatusCode, b, want)
				}
				if strings.Contains(path, "cmdline") && strings.Contains(string(b), "test.") {
					t.Errorf("GET %s shows the command line: %q", path, b)
				}
			}
		})
	}
}

func TestCheckRunsTheNamedChecks(t *testing.T) {
	s, err := New("127.0.0.1:0", prometheus.NewRegistry(), logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	down := errors.New("connection refused")
	s.AddCheck("postgres", func(context.Context) error { return nil })
	s.AddCheck("nats", func(context.Context) error { return down })
	if err := s.Check(t.Context(), "postgres"); err != nil {
		t.Errorf("Check(postgres) = %v", err)
	}
	if err := s.Check(t.Context(), "postgres", "nats"); !errors.Is(err, down) || !strings.HasPrefix(err.Error(), "nats: ") {
		t.Errorf("Check(postgres, nats) = %v, want the nats failure named", err)
	}
	if err := s.Check(t.Context(), "catalog"); !errors.Is(err, ErrNoCheck) {
		t.Errorf("Check(catalog) = %v, want ErrNoCheck", err)
	}
}
