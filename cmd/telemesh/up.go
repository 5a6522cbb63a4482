package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/local"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/migrate"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/simulate"
	"github.com/telemesh/telemesh/services/viewer"
)

// defaultDataDir is where `telemesh up` keeps its NATS store and, when it
// starts one, its Postgres cluster.
func defaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "telemesh")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "telemesh")
	}
	return filepath.Join(os.TempDir(), "telemesh")
}

func newUpCmd(e env) *cobra.Command {
	var (
		dataDir, databaseURL, natsURL, host, logLevel string
		grpcBase, adminBase                           int
		noDemo, simulateToo, pprofOn                  bool
		simRate                                       float64
		viewerListen                                  string
	)
	vcfg := viewer.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the whole mesh on this machine: NATS, Postgres, every stage, and a demo fleet",
		Long: `up runs telemesh on one machine. NATS is TELEMESH_NATS_URL if set, else an
embedded server with JetStream on a free port. Postgres is TELEMESH_DATABASE_URL
if set, else the local server on 127.0.0.1:5432 (database telemesh, created if
missing), else a private cluster started from the installed Postgres binaries.
It migrates, seeds a demo fleet unless --no-demo, and starts every stage on its
own loopback gRPC port, downstream first, then the Telemetry Viewer (a web
page on --viewer-listen). Ctrl-C stops everything cleanly.`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&dataDir, "data-dir", defaultDataDir(), "where the embedded NATS store and a private Postgres cluster live")
	fs.StringVar(&databaseURL, "database-url", "", "Postgres URL; empty finds or starts a local one")
	fs.StringVar(&natsURL, "nats-url", "", "NATS URL; empty starts an embedded server")
	fs.StringVar(&host, "host", "127.0.0.1", "address every stage listens on")
	fs.IntVar(&grpcBase, "grpc-port", 7070, "gRPC port of the gateway; the validator, deriver, persister and publisher take the next four")
	fs.IntVar(&adminBase, "admin-port", 9070, "admin HTTP port of the gateway; the other stages take the next four")
	fs.BoolVar(&noDemo, "no-demo", false, "do not seed the demo fleet")
	fs.BoolVar(&simulateToo, "simulate", false, "also run the device simulator against the demo fleet, with a small fault mix")
	fs.Float64Var(&simRate, "simulate-rate", 20, "messages per second of --simulate")
	fs.StringVar(&logLevel, "log-level", "warn", "log level of the stages: debug, info, warn or error")
	fs.StringVar(&viewerListen, "viewer-listen", vcfg.Listen, "HTTP address of the Telemetry Viewer; empty leaves it off")
	fs.StringVar(&vcfg.Token, "viewer-token", "", "token the viewer's page must send to retry publishes and change switches; empty leaves it read-only (also --token)")
	config.MarkSecret(fs, "database-url", "nats-url", "viewer-token")
	addPprofFlag(fs, &pprofOn)
	fs.SetNormalizeFunc(normalizeViewerToken)

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
			return err
		}
		for name, p := range map[string]int{"grpc-port": grpcBase, "admin-port": adminBase} {
			if p < 1 || p > 65535-4 {
				return config.Invalid(name, "%d is out of range 1..65531", p)
			}
		}
		if err := config.CheckOneOf("log-level", logLevel, logging.Levels...); err != nil {
			return err
		}
		if viewerListen != "" {
			if err := config.CheckListenAddr("viewer-listen", viewerListen); err != nil {
				return err
			}
		}
		if simulateToo && noDemo {
			return config.Invalid("simulate", "needs the demo fleet; drop --no-demo")
		}
		if databaseURL != "" {
			if _, err := pg.ParseURL(databaseURL); err != nil {
				return config.Invalid("database-url", "%v", err)
			}
		}
		logger, _ := logging.New(e.stderr, "auto", logLevel)
		ctx := cmd.Context()
		if err := os.MkdirAll(dataDir, 0o755); err != nil {
			return config.Invalid("data-dir", "%v", err)
		}

		say := func(format string, args ...any) { fmt.Fprintf(e.stdout, format+"\n", args...) }
		natsWhere := "TELEMESH_NATS_URL"
		if natsURL == "" {
			n, err := local.StartNATS(filepath.Join(dataDir, "nats"))
			if err != nil {
				return err
			}
			defer n.Shutdown()
			natsURL, natsWhere = n.URL(), "embedded, store in "+filepath.Join(dataDir, "nats")
		}
		say("NATS      %s (%s)", config.MaskURL(natsURL), natsWhere)

		db, err := local.FindPostgres(ctx, databaseURL, dataDir, "telemesh", logger)
		if err != nil {
			return err
		}
		defer func() {
			if err := db.Stop(); err != nil {
				logger.Warn("stop postgres", "err", err)
			}
		}()
		say("Postgres  %s (%s)", config.MaskURL(db.URL), db.Where)

		res, err := migrate.Up(ctx, db.URL, logger)
		if err != nil {
			return err
		}
		say("Migrated  %d migration(s) applied", len(res))
		if !noDemo {
			pool, err := pg.Open(ctx, db.URL, pg.Options{ApplicationName: "telemesh-up"})
			if err != nil {
				return err
			}
			err = demo.Seed(ctx, pool)
			pool.Close()
			if err != nil {
				return err
			}
			say("Demo      %d devices seeded (2 organizations, 3 device types)", len(demo.Devices))
		}

		ports := map[string][2]int{}
		for i, s := range app.Stages {
			ports[s] = [2]int{grpcBase + i, adminBase + i}
		}
		mesh, err := app.StartMesh(ctx, app.MeshOptions{
			DatabaseURL: db.URL, NATSURL: natsURL, Host: host, Ports: ports,
			Tune: func(o *app.Options) {
				o.Process.LogFormat, o.Process.LogLevel = "auto", logLevel
				o.Process.Pprof = pprofOn
				o.Process.ShutdownGrace = 10 * time.Second
				o.Gateway.Subjects = demo.Subjects
				o.Env = "local"
			},
		}, logger)
		if err != nil {
			return err
		}
		// The viewer starts after the stages, whose logs and outputs it
		// reads, and stops before them.
		var viewerURL string
		var viewerDone chan error
		if viewerListen != "" {
			vcfg.Listen, vcfg.Version, vcfg.Env = viewerListen, version, "local"
			vcfg.Targets = map[string]string{}
			for stage, addr := range mesh.GRPC {
				vcfg.Targets[stage] = addr
			}
			srv, closeViewer, err := openViewer(ctx, vcfg, db.URL, app.NATS{URL: natsURL}, logger.With("stage", "viewer"))
			if err != nil {
				_ = mesh.Stop()
				return viewerSetupError("viewer-listen", err)
			}
			defer closeViewer()
			viewerDone = make(chan error, 1)
			go func() { viewerDone <- srv.Run(ctx) }()
			viewerURL = srv.URL()
		}
		printUp(e, mesh, natsURL, db.URL, viewerURL, vcfg.Token != "")
		if simulateToo {
			go runSimulator(ctx, natsURL, simRate, logger)
			say("Simulator %.0f msg/s over %d demo devices, with invalid, inactive, duplicate and missing-input messages mixed in", simRate, len(demo.Devices))
		}
		<-ctx.Done()
		say("\nstopping: the viewer, then the gateway first and the publisher last; unfinished messages stay in the stream")
		if viewerDone != nil {
			if err := <-viewerDone; err != nil {
				logger.Warn("viewer", "err", err)
			}
		}
		return mesh.Stop()
	}
	return cmd
}

// runSimulator publishes demo telemetry until ctx ends.
func runSimulator(ctx context.Context, natsURL string, rate float64, logger *slog.Logger) {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		logger.Error("simulator", "err", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		logger.Error("simulator", "err", err)
		return
	}
	// The gateway creates the stream; wait for it.
	for ctx.Err() == nil {
		if _, err := js.Stream(ctx, app.DefaultOptions(app.Gateway).Gateway.Stream); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	cfg := simulate.Config{
		Devices: simulate.DemoDevices(len(demo.Devices)), Rate: rate, MessageIDs: true, Seed: time.Now().UnixNano(),
		Faults: simulate.Faults{Invalid: 5, Inactive: 5, DuplicateIDs: 3, UnknownTopic: 1, MalformedJSON: 1, MissingInputs: 10},
	}
	if _, err := simulate.Run(ctx, js, cfg, nil); err != nil && ctx.Err() == nil {
		logger.Error("simulator stopped", "err", err)
	}
}

func printUp(e env, m *app.Mesh, natsURL, databaseURL, viewerURL string, viewerToken bool) {
	if viewerURL != "" {
		access := "read-only; set TELEMESH_VIEWER_TOKEN to allow retries and switches"
		if viewerToken {
			access = "retries and switches ask for the viewer token"
		}
		fmt.Fprintf(e.stdout, "Viewer    %s (%s)\n", viewerURL, access)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSTAGE\tGRPC\tADMIN (metrics, healthz, readyz; pprof with --pprof)")
	for _, s := range app.Stages {
		fmt.Fprintf(tw, "%s\t%s\thttp://%s/metrics\n", s, m.GRPC[s], m.Admin[s])
	}
	_ = tw.Flush()
	gw, val := m.GRPC[app.Gateway], m.GRPC[app.Validator]
	fmt.Fprintf(e.stdout, `
Try:
  grpcurl -plaintext %[1]s list
  grpcurl -plaintext %[2]s grpc.health.v1.Health/Check
  grpcurl -plaintext -d '{"subject":"devices.thermo-01.telemetry","payload":"%[3]s","dry_run":true}' %[1]s telemesh.gateway.v1.GatewayService/Ingest

Next, in another terminal:
  telemesh simulate --nats-url %[4]s --count 500 --invalid-pct 10 --missing-inputs-pct 10
  telemesh devices list --database-url '%[5]s'
  psql '%[5]s' -c 'select status, count(*) from ingestion_messages group by 1'

telemesh is running; Ctrl-C stops it.
`, gw, val, b64(`{"temp_c": 21.5, "humidity": 40}`), natsURL, databaseURL)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
