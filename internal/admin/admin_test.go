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
	s, err := New("127.0.0.1:0", reg, logging.Discard())
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
