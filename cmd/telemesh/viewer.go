package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/natsx"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/services/viewer"
)

// newViewerCmd returns `serve viewer`, the Telemetry Viewer on its own.
func newViewerCmd(e env) *cobra.Command {
	cfg := viewer.DefaultConfig()
	// The container image and the Helm chart serve the page on 8080 and the
	// admin port on 9080.
	cfg.Listen, cfg.AdminListen = ":8080", ":9080"
	cfg.Version = version
	n := app.DefaultNATS()
	var databaseURL, logFormat, logLevel string
	cmd := &cobra.Command{
		Use:   "viewer",
		Short: "Serve the Telemetry Viewer: live telemetry, device charts, pipeline health and message lookup in a web page",
		Long: `viewer serves a web page (its assets are in the binary) that shows telemetry live
as the pipeline processes it, each device's latest values and recent charts,
the health of the pipeline, and the trace of one message. It reads Postgres,
the publisher's analytics subjects and KV bucket, and the gateway's stream.

It is read-only unless it has a token: retrying a publish and changing a
switch need it. Give it in TELEMESH_VIEWER_TOKEN or in a file named by
--viewer-token-file (--token-file), never on the command line if you can
help it: --viewer-token (--token) is the last resort.

The admin port (--admin-listen) serves /metrics, /healthz and /readyz, and
the runtime profiles under /debug/pprof/ only with --pprof.`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "HTTP listen address of the page, host:port (port 0 picks a free one)")
	fs.StringVar(&cfg.AdminListen, "admin-listen", cfg.AdminListen, "admin HTTP listen address for /metrics, /healthz, /readyz (and /debug/pprof with --pprof); unauthenticated, so keep it off the public network; empty turns it off")
	app.RegisterPprofFlag(fs, &cfg.Pprof)
	fs.StringVar(&databaseURL, "database-url", "", "Postgres URL the stages write to (required)")
	fs.StringVar(&logFormat, "log-format", "auto", "log format: auto (text on a terminal, else json), text or json")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", cfg.ShutdownGrace, "time allowed on SIGTERM for requests in flight")
	config.MarkSecret(fs, "database-url")
	n.RegisterFlags(fs)
	addViewerFlags(fs, &cfg)
	targets := map[string]*string{}
	for _, stage := range app.Stages {
		targets[stage] = fs.String(stage+"-addr", "", "gRPC target of the "+stage+" whose health the page shows; empty leaves it out")
	}

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
			return err
		}
		if err := config.CheckListenAddr("listen", cfg.Listen); err != nil {
			return err
		}
		if cfg.AdminListen != "" {
			if err := config.CheckListenAddr("admin-listen", cfg.AdminListen); err != nil {
				return err
			}
		}
		if databaseURL == "" {
			return config.Invalid("database-url", "required")
		}
		if _, err := pg.ParseURL(databaseURL); err != nil {
			return config.Invalid("database-url", "%v", err)
		}
		if n.URL == "" {
			return config.Invalid("nats-url", "required")
		}
		if cfg.ShutdownGrace <= 0 {
			return config.Invalid("shutdown-grace", "must be positive")
		}
		if err := checkViewerFlags(cfg); err != nil {
			return err
		}
		for stage, target := range targets {
			if *target == "" {
				continue
			}
			if err := config.CheckTarget(stage+"-addr", *target); err != nil {
				return err
			}
			if cfg.Targets == nil {
				cfg.Targets = map[string]string{}
			}
			cfg.Targets[stage] = *target
		}
		logger, err := logging.New(e.stderr, logFormat, logLevel)
		if err != nil {
			return config.Invalid("log-format", "%v", err)
		}
		logger = logger.With("stage", "viewer")
		config.Print(logger, "configuration", fs)
		srv, closeDeps, err := openViewer(cmd.Context(), cfg, databaseURL, n, logger)
		if err != nil {
			return viewerSetupError("listen", err)
		}
		defer closeDeps()
		return srv.Run(cmd.Context())
	}
	return cmd
}

// addViewerFlags registers the viewer's own settings, which `serve viewer`
// and `up` share. --token is accepted for --viewer-token (and --token-file
// for --viewer-token-file); the long names are the ones the environment
// (TELEMESH_VIEWER_TOKEN) and the chart use.
func addViewerFlags(fs *pflag.FlagSet, cfg *viewer.Config) {
	fs.StringVar(&cfg.Token, "viewer-token", cfg.Token, "token the page must send (it asks for it) to retry publishes and change switches; empty leaves the viewer read-only (also --token)")
	fs.StringVar(&cfg.Env, "env", cfg.Env, "follow the analytics subjects of this environment token only; empty follows every environment")
	fs.StringVar(&cfg.Stream, "stream", cfg.Stream, "the gateway's JetStream stream: the backlog, and the subjects of the raw stream")
	fs.StringVar(&cfg.Consumer, "consumer", cfg.Consumer, "the gateway's durable consumer")
	fs.StringVar(&cfg.Bucket, "kv-bucket", cfg.Bucket, "the publisher's KV bucket of device states")
	fs.StringSliceVar(&cfg.RawSubjects, "raw-subjects", cfg.RawSubjects, "subjects of the raw pre-ingestion stream, comma-separated; empty takes the stream's")
	fs.Float64Var(&cfg.RawRate, "raw-rate", cfg.RawRate, "raw messages per second sent to the page at most; the rest are counted as skipped")
	fs.IntVar(&cfg.HistoryMinutes, "history-minutes", cfg.HistoryMinutes, "how many minutes a device's charts and invalid messages reach back")
	fs.IntVar(&cfg.MaxClients, "max-clients", cfg.MaxClients, "live connections (open pages) at most")
	fs.IntVar(&cfg.MaxClientsPerAddr, "max-clients-per-address", cfg.MaxClientsPerAddr, "live connections of one client at most (one address, an IPv6 /64, or the address a trusted proxy forwards)")
	fs.StringSliceVar(&cfg.TrustedProxies, "trusted-proxies", cfg.TrustedProxies, "addresses or CIDRs of reverse proxies (an ingress controller) whose --client-ip-header is believed, comma-separated; empty believes none")
	fs.StringVar(&cfg.ClientIPHeader, "client-ip-header", cfg.ClientIPHeader, "header a trusted proxy puts the client's address in (X-Forwarded-For or X-Real-IP); ignored from any other peer")
	config.MarkSecret(fs, "viewer-token")
	fs.SetNormalizeFunc(normalizeViewerToken)
}

// normalizeViewerToken accepts --token and --token-file for --viewer-token
// and --viewer-token-file.
func normalizeViewerToken(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	switch name {
	case "token":
		name = "viewer-token"
	case "token-file":
		name = "viewer-token-file"
	}
	return pflag.NormalizedName(name)
}

// checkViewerFlags names the first viewer setting that cannot be used.
func checkViewerFlags(cfg viewer.Config) error {
	switch {
	case cfg.Stream == "":
		return config.Invalid("stream", "must not be empty")
	case cfg.Consumer == "":
		return config.Invalid("consumer", "must not be empty")
	case cfg.Bucket == "":
		return config.Invalid("kv-bucket", "must not be empty")
	case cfg.RawRate <= 0:
		return config.Invalid("raw-rate", "%v: must be positive", cfg.RawRate)
	case cfg.HistoryMinutes < 1 || cfg.HistoryMinutes > 24*60:
		return config.Invalid("history-minutes", "%d is out of range 1..1440", cfg.HistoryMinutes)
	case cfg.MaxClients < 1:
		return config.Invalid("max-clients", "%d: must be at least 1", cfg.MaxClients)
	case cfg.MaxClientsPerAddr < 1:
		return config.Invalid("max-clients-per-address", "%d: must be at least 1", cfg.MaxClientsPerAddr)
	}
	if err := viewer.CheckTrustedProxies(cfg.TrustedProxies); err != nil {
		return config.Invalid("trusted-proxies", "%v", err)
	}
	if err := viewer.CheckClientIPHeader(cfg.ClientIPHeader); err != nil {
		return config.Invalid("client-ip-header", "%v", err)
	}
	return nil
}

// openViewer opens the Postgres pool and the NATS connection the viewer
// reads and builds it. The returned function closes what it opened; call
// it after the viewer's Run returns.
func openViewer(ctx context.Context, cfg viewer.Config, databaseURL string, n app.NATS, logger *slog.Logger) (*viewer.Server, func(), error) {
	pool, err := pg.Open(ctx, databaseURL, pg.Options{ApplicationName: "telemesh-viewer", MaxConns: 8})
	if err != nil {
		return nil, nil, config.Invalid("database-url", "%v", err)
	}
	nc, err := natsx.Connect(n.URL, "telemesh-viewer", n.Auth, logger)
	if err != nil {
		pool.Close()
		return nil, nil, config.Invalid("nats-url", "%v", err)
	}
	srv, err := viewer.New(cfg, viewer.Deps{Pool: pool, NATS: nc}, logger)
	if err != nil {
		nc.Close()
		pool.Close()
		return nil, nil, err
	}
	return srv, func() {
		nc.Close()
		pool.Close()
	}, nil
}

// viewerSetupError names listenFlag for a viewer that could not listen;
// other errors pass unchanged.
func viewerSetupError(listenFlag string, err error) error {
	var bad *config.Error
	if errors.As(err, &bad) || !errors.Is(err, viewer.ErrConfig) {
		return err
	}
	return config.Invalid(listenFlag, "%v", err)
}
