// Package app composes a stage process out of the shared runtime and the
// stage packages. The telemesh command parses flags into [Options] and calls
// [Serve]; `telemesh up` and the tests call it for every stage in one
// process.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sethvargo/go-retry"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/telemesh/telemesh/gateway"
	"github.com/telemesh/telemesh/internal/admin"
	"github.com/telemesh/telemesh/internal/buildinfo"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/grpcx"
	"github.com/telemesh/telemesh/internal/natsx"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/process"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/tlsx"
	"github.com/telemesh/telemesh/internal/tracing"
	"github.com/telemesh/telemesh/services/persister"
	"github.com/telemesh/telemesh/services/publisher"
	"github.com/telemesh/telemesh/services/validator"
)

// The stages, by the names [pipeline] gives the stage services.
const (
	Gateway   = string(pipeline.Gateway)
	Validator = string(pipeline.Validator)
	Deriver   = string(pipeline.Deriver)
	Persister = string(pipeline.Persister)
	Publisher = string(pipeline.Publisher)
)

// Stages lists the stages in chain order.
var Stages = pipeline.ServiceNames()

// NextHops names the stages each stage calls.
var NextHops = map[string][]string{
	Gateway:   {Validator},
	Validator: {Deriver, Persister},
	Deriver:   {Persister},
	Persister: {Publisher},
}

// UsesNATS reports whether a stage connects to NATS.
func UsesNATS(stage string) bool { return stage == Gateway || stage == Publisher }

// Options configure one stage process. Each stage's own settings are its
// package's Config, which registers its flags and validates them; the
// deriver has none.
type Options struct {
	Stage   string
	Process Process
	NATS    NATS
	// Hops maps each next stage's name to its target.
	Hops      map[string]string
	Gateway   gateway.Config
	Validator validator.Config
	Persister persister.Config
	Publisher publisher.Config
	// Build is the build this process runs, shown by the
	// telemesh_build_info gauge; the zero value reads it from the binary.
	Build buildinfo.Info
	// OnServing, if set, is called once the stage serves, with its
	// addresses.
	OnServing func(grpcAddr, adminAddr string)
}

// Serve runs one stage until ctx ends, then stops it gracefully.
func Serve(ctx context.Context, o Options, logger *slog.Logger) error {
	s := &o.Process
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := o.Build
	if bi.Version == "" {
		bi = buildinfo.Read("", "", "")
	}
	if err := buildinfo.Register(reg, bi); err != nil {
		return err
	}

	var closers []func(context.Context) error
	defer func() {
		// ctx has ended by now; the closers still need a live one.
		closeCtx := context.WithoutCancel(ctx)
		for i := len(closers) - 1; i >= 0; i-- {
			_ = closers[i](closeCtx)
		}
	}()

	// Tracing is closed last, so the spans of the final batches go out.
	tp, err := tracing.New(ctx, s.Tracing, "telemesh-"+o.Stage, bi)
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	closers = append(closers, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return tp.Shutdown(ctx)
	})
	var traceProvider trace.TracerProvider
	if tp.Enabled() {
		traceProvider = tp.TracerProvider()
		logger.Info("tracing on", "otlp_endpoint", tracing.Redacted(s.Tracing.Endpoint), "sampler", s.Tracing.Sampler, "ratio", s.Tracing.Ratio)
	}

	popts := pg.Options{ApplicationName: "telemesh-" + o.Stage}
	if t := tp.SQLTracer(); t != nil {
		popts.Tracer = t
	}
	pool, err := pg.Open(ctx, s.DatabaseURL, popts)
	if err != nil {
		return err
	}
	closers = append(closers, func(context.Context) error { pool.Close(); return nil })

	logs, err := stagelog.New(stagelog.Mode(s.StageLogMode), s.StageLogSampleRate, s.Instance)
	if err != nil {
		return config.Invalid("stage-log-mode", "%v", err)
	}
	logs, err = logs.WithLimits(s.StageLogLimits()).WithMetrics(reg)
	if err != nil {
		return err
	}
	reg.MustRegister(pg.NewPoolCollector(pool))

	// With mTLS the server requires client certificates and the clients to
	// the next hops present theirs; both re-read rotated files by themselves.
	// Each call is then admitted only from the callers the table names
	// (Callers), by the identity in their certificate, so this stage's own
	// certificate must carry its identity for its next hops to admit it.
	serverCfg := s.ServerConfig()
	serverCfg.TracerProvider = traceProvider
	var clientCreds credentials.TransportCredentials
	if s.TLS.Enabled() {
		certs, err := tlsx.New(s.TLS, 0, logger)
		if err != nil {
			return tlsInvalid(err)
		}
		td := s.trustDomain()
		if err := checkOwnIdentity(o.Stage, certs.Certificate(), td); err != nil {
			return err
		}
		serverCfg.Credentials = certs.ServerCredentials()
		serverCfg.Authorize = Policy(td)
		clientCreds = certs.ClientCredentials(s.TLSServerName)
	}

	clientMetrics := grpcprom.NewClientMetrics()
	reg.MustRegister(clientMetrics)
	conns := map[string]*grpc.ClientConn{}
	for _, next := range NextHops[o.Stage] {
		conn, err := grpcx.Dial(o.Hops[next], grpcx.ClientConfig{MaxMsgBytes: s.MaxRecvMsgBytes, Metrics: clientMetrics, Credentials: clientCreds, TracerProvider: traceProvider})
		if err != nil {
			return config.Invalid(next+"-addr", "%v", err)
		}
		conns[next] = conn
		closers = append(closers, func(context.Context) error { return conn.Close() })
	}

	var nc *nats.Conn
	if UsesNATS(o.Stage) {
		nc, err = natsx.Connect(o.NATS.URL, "telemesh-"+o.Stage+"-"+s.Instance, o.NATS.Auth, logger)
		if errors.Is(err, natsx.ErrAuth) {
			flag := o.NATS.Auth.Method()
			if flag == "" {
				return config.Invalid("nats-url", "%v: the server requires credentials (TELEMESH_NATS_USER with TELEMESH_NATS_PASSWORD or --nats-password-file, TELEMESH_NATS_TOKEN or --nats-token-file, --nats-nkey-file or --nats-creds-file)", err)
			}
			return config.Invalid(flag, "%v", err)
		}
		if err != nil {
			return config.Invalid("nats-url", "%v", err)
		}
		closers = append(closers, func(context.Context) error { return nc.Drain() })
	}

	srv, err := grpcx.NewServer(serverCfg, logger, reg) //nolint:contextcheck // each call brings its context.
	if err != nil {
		return err
	}
	cat := catalog.NewCache(pool, logger, 30*time.Second)
	built, err := build(ctx, o, &deps{logger: logger, pool: pool, conns: conns, nc: nc, catalog: cat, logs: logs, reg: reg, tracing: tp})
	if err != nil {
		return fmt.Errorf("start %s: %w", o.Stage, err)
	}
	built.handler.Register(srv)

	ln, err := net.Listen("tcp", s.Listen)
	if err != nil {
		return config.Invalid("listen", "%v", err)
	}
	var healthLn net.Listener
	if s.HealthListen != "" {
		if healthLn, err = net.Listen("tcp", s.HealthListen); err != nil {
			_ = ln.Close()
			return config.Invalid("health-listen", "%v", err)
		}
	}
	adm, err := admin.New(s.AdminListen, reg, logger, admin.WithPprof(s.Pprof))
	if err != nil {
		_ = ln.Close()
		if healthLn != nil {
			_ = healthLn.Close()
		}
		return config.Invalid("admin-listen", "%v", err)
	}
	adm.AddCheck("postgres", func(ctx context.Context) error { return pg.Reachable(ctx, pool) })
	if nc != nil {
		adm.AddCheck("nats", func(context.Context) error {
			if !nc.IsConnected() {
				return fmt.Errorf("nats: %s", nc.Status())
			}
			return nil
		})
	}
	adm.AddCheck("catalog", func(context.Context) error {
		if cat.Snapshot() == nil {
			return fmt.Errorf("catalog not loaded yet")
		}
		return nil
	})

	// The catalog loads in the background so a stage starts, and answers
	// health checks, while Postgres is still coming up; until it loads,
	// calls fail with Unavailable and callers retry.
	workers := append([]process.Worker{{Name: "catalog", Run: func(ctx context.Context) error {
		err := retry.Do(ctx, startBackoff(), func(ctx context.Context) error {
			if err := cat.Load(ctx); err != nil {
				logger.Warn("catalog not loaded yet; retrying", "err", err)
				return retry.RetryableError(err)
			}
			return nil
		})
		if err != nil {
			// Every failure is retried: only the end of ctx stops it.
			return nil
		}
		return cat.Run(ctx)
	}}}, built.workers...)
	// Every stage writes stage rows, so every stage keeps their message_id
	// index summarized; only one call at a time does the work.
	workers = append(workers, process.Worker{Name: "stage-log-summary", Run: func(ctx context.Context) error {
		return stagelog.SummarizeLoop(ctx, pool, stagelog.SummarizeEvery, logger)
	}})

	// /readyz also says whether the health service says SERVING, so a
	// probe of either sees the same: not while draining, nor before the
	// checks below have passed once.
	adm.AddCheck("serving", func(ctx context.Context) error {
		if !srv.Serving(ctx) {
			return errNotServing
		}
		return nil
	})
	// SERVING means the stage can take calls now; the admin port's /readyz
	// shows every check. The publisher needs only Postgres to do its work:
	// without NATS it records each publish as failed, for its retry loop.
	ready := []string{"postgres", "catalog"}
	if o.Stage == Gateway {
		ready = append(ready, "nats")
	}
	p := &process.Process{
		Ready:         func(ctx context.Context) error { return adm.Check(ctx, ready...) },
		ReadyEvery:    s.ReadyEvery,
		Name:          o.Stage,
		Logger:        logger,
		GRPC:          srv,
		Listener:      ln,
		Admin:         adm,
		Workers:       workers,
		ShutdownGrace: s.ShutdownGrace,
	}
	if healthLn != nil {
		p.Health, p.HealthListener = srv.NewHealthServer(), healthLn
	}
	if o.OnServing != nil {
		p.OnServing = func() { o.OnServing(ln.Addr().String(), adm.Addr()) }
	}
	return p.Run(ctx)
}

// errNotServing is the readiness of a stage whose health says NOT_SERVING.
var errNotServing = errors.New("health is NOT_SERVING")

// deps are what Serve opens for a stage before building it.
type deps struct {
	logger  *slog.Logger
	pool    *pgxpool.Pool
	conns   map[string]*grpc.ClientConn
	nc      *nats.Conn
	catalog *catalog.Cache
	logs    *stagelog.Writer
	reg     prometheus.Registerer
	tracing *tracing.Provider
}

// builtStage is a constructed stage: its gRPC handler and the workers that
// run beside it.
type builtStage struct {
	handler interface{ Register(grpc.ServiceRegistrar) }
	workers []process.Worker
}
