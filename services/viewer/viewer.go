// Package viewer is the Telemetry Viewer: one web page, its assets embedded
// in the binary, that shows telemetry live as the pipeline processes it,
// each device's latest values and recent history, the health of the
// pipeline (throughput, durations, failures, the publish outbox, the
// consumer backlog and the switches) and the trace of one message.
//
// Live data reaches the page as server-sent events. The viewer subscribes to
// the publisher's analytics and invalid-event subjects on NATS, and, while a
// page asks for it, to the subjects the gateway's stream captures (the raw,
// pre-ingestion stream). Everything else is read from Postgres and the
// device-states KV bucket when asked. The page is read-only unless a token
// is configured; retrying a publish and flipping a switch need it.
//
// A [Server] is embeddable: [New] takes its configuration, an open Postgres
// pool and NATS connection (which stay the caller's), and a logger; [Server.Run]
// serves until its context ends and then stops gracefully.
package viewer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/telemesh/telemesh/internal/admin"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/pipelinestate"
)

// ErrConfig is the cause of every error [Config.Validate] returns: a setting
// the viewer cannot use.
var ErrConfig = errors.New("invalid viewer configuration")

// ErrNoToken is returned for a change (a retry, a switch) asked of a viewer
// that has no token configured: such a viewer is read-only.
var ErrNoToken = errors.New("this viewer has no token configured (TELEMESH_VIEWER_TOKEN or --viewer-token-file), so it is read-only")

// ErrUnauthorized is returned for a change asked without the viewer's token,
// or with another one.
var ErrUnauthorized = errors.New("missing or wrong viewer token")

// ErrTooManyClients is returned when the live connections are at the
// configured maximum.
var ErrTooManyClients = errors.New("too many live connections to this viewer")

// ErrTooManyFromClient is returned when one client (one address, or one
// IPv6 /64) already holds its share of the live connections.
var ErrTooManyFromClient = errors.New("too many live connections from this address; close a page of this viewer and try again")

// ErrBadRequest is the cause of the errors returned for a request whose
// parameters or body cannot be used.
var ErrBadRequest = errors.New("bad request")

// ErrAlreadyRun is returned by a second call of [Server.Run].
var ErrAlreadyRun = errors.New("viewer already run")

// Config configures a viewer. [DefaultConfig] gives every field a usable
// value; Listen and Token are the ones usually set.
type Config struct {
	// Listen is the HTTP address, host:port (port 0 picks a free one).
	Listen string
	// AdminListen, if set, serves /metrics, /healthz and /readyz on a
	// second port, as every stage does.
	AdminListen string
	// Pprof also serves the runtime profiles on the admin port.
	Pprof bool
	// Token, if set, allows retries and switch changes to the requests that
	// carry it as "Authorization: Bearer <token>". Empty leaves the viewer
	// read-only.
	Token string
	// Env narrows the analytics subjects to one environment token
	// (iot.v1.analytics.<env>.>); empty follows every environment.
	Env string
	// Stream and Consumer are the gateway's JetStream stream and durable
	// consumer: the backlog, and the subjects of the raw stream.
	Stream, Consumer string
	// Bucket is the publisher's KV bucket of device states.
	Bucket string
	// RawSubjects are the subjects of the raw stream; empty takes the
	// stream's own subjects.
	RawSubjects []string
	// RawRate bounds the raw messages per second sent to pages; the rest
	// are counted as skipped.
	RawRate float64
	// HistoryMinutes is how far back a device's charts and invalid
	// messages reach.
	HistoryMinutes int
	// HealthEvery is how often the health panel is refreshed: once for all
	// the open pages, and not at all while none is open. The one-hour
	// figures, which read the most rows, are refreshed every SlowEvery.
	HealthEvery, SlowEvery time.Duration
	// Heartbeat is how often a quiet live connection gets a ping, so pages
	// and proxies can tell it is alive.
	Heartbeat time.Duration
	// MaxClients bounds the live connections.
	MaxClients int
	// MaxClientsPerAddr bounds the live connections of one client, so one
	// cannot take every slot: a client is its remote address (an IPv6
	// address counts by its /64), or, behind a trusted proxy, the address
	// the proxy forwards in ClientIPHeader. More than MaxClients means no
	// bound of its own.
	MaxClientsPerAddr int
	// TrustedProxies are the addresses or CIDRs of the reverse proxies
	// (an ingress controller) whose ClientIPHeader is believed. From any
	// other peer the header is ignored. Empty trusts none.
	TrustedProxies []string
	// ClientIPHeader is the header a trusted proxy puts the client's address
	// in: X-Forwarded-For (a comma-separated list the proxy appends to) or
	// X-Real-IP (one address).
	ClientIPHeader string
	// ClientBuffer is how many events wait for one slow page before the
	// newer ones are dropped (and the page told how many).
	ClientBuffer int
	// Backlog is how many recent events the viewer keeps, to send a page
	// that connects, or reconnects, what it missed.
	Backlog int
	// Targets optionally maps stage names to gRPC targets whose health the
	// panel shows.
	Targets map[string]string
	// ShutdownGrace bounds the graceful stop of requests in flight.
	ShutdownGrace time.Duration
	// ReadTimeout, WriteTimeout and IdleTimeout are the HTTP server's; the
	// live connection is exempt from the first two.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// Version is shown on the page.
	Version string
}

// DefaultConfig returns the settings of a viewer next to a local mesh.
func DefaultConfig() Config {
	return Config{
		Listen:         "127.0.0.1:7080",
		Stream:         "TELEMETRY",
		Consumer:       "telemesh-gateway",
		Bucket:         "device-states",
		RawRate:        50,
		HistoryMinutes: 10,
		HealthEvery:    2 * time.Second,
		SlowEvery:      30 * time.Second,
		Heartbeat:      15 * time.Second,
		MaxClients:     64,
		ClientBuffer:   256,
		Backlog:        1000,
		ShutdownGrace:  10 * time.Second,
		ReadTimeout:    15 * time.Second,
		WriteTimeout:   30 * time.Second,
		IdleTimeout:    2 * time.Minute,
		Version:        "dev",

		// A browser holds one live connection per open page; eight leave a
		// client room for several pages while the 64 serve eight clients
		// at the very least.
		MaxClientsPerAddr: 8,
		ClientIPHeader:    "X-Forwarded-For",
	}
}

// Validate reports the first setting the viewer cannot use, wrapping
// [ErrConfig].
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Listen == "":
		return bad("no listen address")
	case c.Stream == "" || c.Consumer == "" || c.Bucket == "":
		return bad("stream, consumer and bucket must be named")
	case c.RawRate <= 0:
		return bad("raw rate %v must be positive", c.RawRate)
	case c.HistoryMinutes < 1 || c.HistoryMinutes > 24*60:
		return bad("history minutes %d is out of range 1..1440", c.HistoryMinutes)
	case c.HealthEvery <= 0 || c.SlowEvery <= 0:
		return bad("health refresh intervals must be positive")
	case c.Heartbeat <= 0:
		return bad("heartbeat %s must be positive", c.Heartbeat)
	case c.MaxClients < 1:
		return bad("max clients %d must be at least 1", c.MaxClients)
	case c.MaxClientsPerAddr < 1:
		return bad("max clients per address %d must be at least 1", c.MaxClientsPerAddr)
	case c.ClientBuffer < 1:
		return bad("client buffer %d must be at least 1", c.ClientBuffer)
	case c.Backlog < 1:
		return bad("backlog %d must be at least 1", c.Backlog)
	case c.ShutdownGrace <= 0:
		return bad("shutdown grace %s must be positive", c.ShutdownGrace)
	case c.ReadTimeout <= 0 || c.WriteTimeout <= 0 || c.IdleTimeout <= 0:
		return bad("HTTP timeouts must be positive")
	}
	if err := CheckTrustedProxies(c.TrustedProxies); err != nil {
		return bad("%v", err)
	}
	if err := CheckClientIPHeader(c.ClientIPHeader); err != nil {
		return bad("client IP header: %v", err)
	}
	return nil
}

// Deps are what a viewer reads from. They stay the caller's: the viewer
// never closes them.
type Deps struct {
	// Pool is the Postgres the stages write to.
	Pool *pgxpool.Pool
	// NATS is a connection to the mesh's NATS server.
	NATS *nats.Conn
}

// Server is one viewer.
type Server struct {
	cfg    Config
	pool   *pgxpool.Pool
	nc     *nats.Conn
	js     jetstream.JetStream
	logger *slog.Logger

	tokenHash []byte         // sha256 of the token; nil when none is configured
	proxies   []netip.Prefix // the trusted proxies
	ln        net.Listener
	adm       *admin.Server
	reg       *prometheus.Registry
	metrics   *metrics
	catalog   *catalog.Cache
	state     *pipelinestate.Reader // what the health panel shows, read as status reads it
	hub       *hub
	health    *healthCache
	raw       *rawSource
	http      *http.Server

	// stopping is closed when Run begins to stop, so live connections end
	// and let the HTTP server drain.
	stopping chan struct{}
	ran      atomic.Bool
	wg       sync.WaitGroup
}

// New checks cfg, listens on its addresses and returns a server that
// [Server.Run] starts. A server that is never run should be given a
// cancelled context to Run, which releases its listeners.
func New(cfg Config, deps Deps, logger *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Pool == nil || deps.NATS == nil {
		return nil, fmt.Errorf("%w: a Postgres pool and a NATS connection are required", ErrConfig)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// The configuration is the viewer's from here on: a caller changing its
	// map later must not race with the health panel reading it.
	cfg.Targets = maps.Clone(cfg.Targets)
	cfg.RawSubjects = slices.Clone(cfg.RawSubjects)
	cfg.TrustedProxies = slices.Clone(cfg.TrustedProxies)
	proxies, err := parseProxies(cfg.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	js, err := jetstream.New(deps.NATS)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	s := &Server{
		cfg: cfg, pool: deps.Pool, nc: deps.NATS, js: js, logger: logger, proxies: proxies,
		reg:      prometheus.NewRegistry(),
		stopping: make(chan struct{}),
	}
	if cfg.Token != "" {
		h := sha256.Sum256([]byte(cfg.Token))
		s.tokenHash = h[:]
	}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.metrics = newMetrics(s.reg)
	s.catalog = catalog.NewCache(deps.Pool, logger, 30*time.Second)
	s.state = pipelinestate.NewReader(deps.Pool, js, pipelinestate.Config{
		Stream: cfg.Stream, Consumer: cfg.Consumer, Bucket: cfg.Bucket, Targets: cfg.Targets, Timeout: callTimeout,
	}, nil)
	s.hub = newHub(epoch(), cfg.Backlog, cfg.ClientBuffer, cfg.MaxClients, cfg.MaxClientsPerAddr, s.metrics)
	s.health = newHealthCache(s)
	s.raw = newRawSource(s)
	s.hub.onRawDemand = s.raw.demandChanged

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: listen %s: %v", ErrConfig, cfg.Listen, err)
	}
	s.ln = ln
	if cfg.AdminListen != "" {
		adm, err := admin.New(cfg.AdminListen, s.reg, logger, admin.WithPprof(cfg.Pprof))
		if err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		adm.AddCheck("postgres", func(ctx context.Context) error { return pg.Ping(ctx, s.pool) })
		adm.AddCheck("nats", s.natsReady)
		s.adm = adm
	}
	s.http = &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Addr returns the address the page is served on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// AdminAddr returns the admin port's address, or "" when there is none.
func (s *Server) AdminAddr() string {
	if s.adm == nil {
		return ""
	}
	return s.adm.Addr()
}

// URL returns the page's URL.
func (s *Server) URL() string { return "http://" + s.Addr() + "/" }

// Run serves until ctx ends, then stops: live connections are closed (pages
// reconnect to another replica or when this one is back), requests in
// flight finish within the shutdown grace, and the NATS subscriptions are
// removed. It returns nil after a stop asked for through ctx.
func (s *Server) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return ErrAlreadyRun
	}
	errc := make(chan error, 2)
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()

	if ctx.Err() == nil {
		s.startWorkers(workCtx)
		go func() {
			if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("viewer serve: %w", err)
			}
		}()
		if s.adm != nil {
			go func() {
				if err := s.adm.Serve(); err != nil {
					errc <- err
				}
			}()
		}
		s.logger.Info("serving", "http", s.Addr(), "admin", s.AdminAddr(), "read_only", s.tokenHash == nil)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		s.logger.Error("viewer stopping after failure", "err", runErr)
	}

	close(s.stopping)
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownGrace)
	defer cancel()
	if err := s.http.Shutdown(shutCtx); err != nil {
		s.logger.Warn("viewer: requests still in flight at the end of the grace", "err", err)
		_ = s.http.Close()
	}
	_ = s.ln.Close() // a server that never served still holds its listener
	if s.adm != nil {
		if err := s.adm.Shutdown(shutCtx); err != nil {
			s.logger.Warn("viewer admin shutdown", "err", err)
		}
	}
	stopWork()
	s.wg.Wait()
	s.logger.Info("stopped")
	return runErr
}

// startWorkers starts what runs beside the HTTP server: the catalog, the
// analytics subscriptions, the raw stream and the health refresher.
func (s *Server) startWorkers(ctx context.Context) {
	s.goWork(func() {
		// Postgres may come up after the viewer: keep trying; until the
		// catalog loads, events show without derived markers.
		for ctx.Err() == nil {
			if err := s.catalog.Load(ctx); err == nil {
				break
			} else if ctx.Err() == nil {
				s.logger.Warn("viewer catalog not loaded yet; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
		_ = s.catalog.Run(ctx)
	})
	s.goWork(func() { s.runAnalytics(ctx) })
	s.goWork(func() { s.raw.run(ctx) })
	s.goWork(func() { s.health.run(ctx) })
}

func (s *Server) goWork(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// natsReady is the admin readiness check of the NATS connection.
func (s *Server) natsReady(context.Context) error {
	if !s.nc.IsConnected() {
		return fmt.Errorf("nats: %s", s.nc.Status())
	}
	return nil
}

// epoch names this run of the viewer in event ids, so a page reconnecting
// to another replica, or to this one restarted, is not sent the wrong
// events as the ones it missed.
func epoch() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
