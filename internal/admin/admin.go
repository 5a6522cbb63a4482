// Package admin serves a stage's HTTP admin port: Prometheus metrics, liveness,
// readiness and, when asked for, pprof.
//
// The port has no authentication (Prometheus and the kubelet must reach it),
// so it serves nothing that helps an intruder: pprof only with [WithPprof],
// and never /debug/pprof/cmdline, whose command line may carry a secret.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one dependency is usable; a nil error means ready.
type Check func(ctx context.Context) error

// Server is the admin HTTP server of one process.
type Server struct {
	logger *slog.Logger
	srv    *http.Server
	ln     net.Listener

	mu     sync.Mutex
	checks map[string]Check
}

// Option changes what [New] serves.
type Option func(*options)

type options struct {
	pprof bool
}

// WithPprof serves the runtime profiles under /debug/pprof/ when on is
// true. They show the program's internals (stacks, heap contents' types,
// timings) to anyone who reaches the port: turn them on while profiling.
func WithPprof(on bool) Option {
	return func(o *options) { o.pprof = on }
}

// New listens on addr (host:port; port 0 picks a free one) and prepares the
// handlers: /metrics from gatherer, /healthz, /readyz, and pprof only with
// [WithPprof]. Call [Server.Serve] to start.
func New(addr string, gatherer prometheus.Gatherer, logger *slog.Logger, opts ...Option) (*Server, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listen %s: %w", addr, err)
	}
	s := &Server{logger: logger, ln: ln, checks: map[string]Check{}}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		// OpenMetrics, to a scraper that asks for it, carries the latency
		// histograms' exemplars: the trace ids of sampled calls.
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.ready)
	if o.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		// Never the command line: it may carry a secret given as a flag.
		mux.HandleFunc("/debug/pprof/cmdline", http.NotFound)
	}
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// AddCheck adds a readiness check under name; /readyz answers 503 while any
// check fails.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = c
}

// Serve serves until [Server.Shutdown]; it returns nil after a shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin serve: %w", err)
	}
	return nil
}

// Shutdown stops the server, waiting for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.srv.Shutdown(ctx)
}

// Check runs the named checks and returns the first failure as
// "name: reason", nil when all pass. A name without a check fails: a
// readiness that silently skipped a dependency would lie.
func (s *Server) Check(ctx context.Context, names ...string) error {
	for _, n := range names {
		s.mu.Lock()
		c, ok := s.checks[n]
		s.mu.Unlock()
		if !ok {
			return fmt.Errorf("%s: %w", n, ErrNoCheck)
		}
		if err := c(ctx); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
	}
	return nil
}

// ErrNoCheck is a check asked for by name that was never added.
var ErrNoCheck = errors.New("no such check")

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	names := make([]string, 0, len(s.checks))
	for n := range s.checks {
		names = append(names, n)
	}
	checks := make(map[string]Check, len(s.checks))
	for n, c := range s.checks {
		checks[n] = c
	}
	s.mu.Unlock()
	sort.Strings(names)

	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	result := map[string]string{}
	ok := true
	for _, n := range names {
		if err := checks[n](ctx); err != nil {
			ok = false
			result[n] = err.Error()
			continue
		}
		result[n] = "ok"
	}
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": ok, "checks": result})
}
