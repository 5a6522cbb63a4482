package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sethvargo/go-retry"
	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/buildinfo"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/local"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/migrate"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/simulate"
	"github.com/telemesh/telemesh/internal/tracing"
	"github.com/telemesh/telemesh/services/viewer"
)

// meshSpec is what up starts the stages and the viewer with, in one
// process or as child processes alike.
type meshSpec struct {
	host                 string
	ports                map[string][2]int
	databaseURL, natsURL string
	logLevel             string
	pprof                bool
	viewerListen         string
	viewer               viewer.Config
	// tracing is what the OTEL_* variables say; child processes read them
	// from the environment they inherit.
	tracing tracing.Config
}

// The secrets a mesh file can say were left out of its URLs.
const (
	secretDatabasePassword = "database password"
	secretNATSCredentials  = "NATS credentials"
)

// shutdownGrace is each stage's time to finish its batches when up stops.
const shutdownGrace = 10 * time.Second

// runningMesh is the stages and the viewer up started.
type runningMesh interface {
	// describe records where each part serves (and its pid) in m.
	describe(m *local.MeshInfo)
	// wait returns nil when ctx ends, or an error as soon as a part of the
	// mesh stops on its own.
	wait(ctx context.Context) error
	// stop stops the viewer, then the stages gateway first.
	stop() error
}

func newUpCmd(e env) *cobra.Command {
	var (
		dataDir, databaseURL, natsURL, host, logLevel string
		grpcBase, adminBase                           int
		noDemo, simulateToo, processes, pprofOn       bool
		simRate                                       float64
		viewerListen                                  string
	)
	vcfg := viewer.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the whole mesh on this machine: NATS, Postgres, every stage, and a demo fleet",
		Long: `up runs telemesh on one machine. NATS is TELEMESH_NATS_URL if set, else an
embedded server with JetStream on a free port, inside this process. Postgres is
TELEMESH_DATABASE_URL if set, else the local server on 127.0.0.1:5432
(database telemesh, created if missing), else a private cluster started from
the installed Postgres binaries. It migrates, seeds a demo fleet unless
--no-demo, and starts every stage on its own loopback gRPC port, downstream
first (publisher, persister, deriver, validator, gateway), then the Telemetry
Viewer (a web page on --viewer-listen).

By default the five stages and the viewer run inside this one process, each
with its own gRPC server and admin port. With --processes each runs as its own
child process, ` + "`telemesh serve <stage>`" + ` of this same binary, as in
production; their output is shown prefixed with their name, and a child that
exits on its own stops the rest and makes up exit 1. NATS (when embedded) and
a private Postgres stay with this process either way.

While it runs, up writes what it started (stage addresses, admin and viewer
URLs, the NATS and database URLs without passwords, its pid) to mesh.json in
--data-dir; status, doctor, trace, flags, replay, devices, schema, simulate,
retention and migrate read it for whatever their flags and TELEMESH_*
variables leave unset. It prints the export line that points other terminals
at it. Ctrl-C stops everything cleanly, the gateway first, and removes the
file.`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&dataDir, "data-dir", defaultDataDir(), "where the embedded NATS store, the mesh file and a private Postgres cluster live")
	fs.StringVar(&databaseURL, "database-url", "", "Postgres URL; empty finds or starts a local one")
	fs.StringVar(&natsURL, "nats-url", "", "NATS URL; empty starts an embedded server")
	fs.StringVar(&host, "host", "127.0.0.1", "address every stage listens on")
	fs.IntVar(&grpcBase, "grpc-port", 7070, "gRPC port of the gateway; the validator, deriver, persister and publisher take the next four")
	fs.IntVar(&adminBase, "admin-port", 9070, "admin HTTP port of the gateway; the other stages take the next four")
	fs.BoolVar(&processes, "processes", false, "run each stage and the viewer as its own child process (telemesh serve <stage>), as in production, instead of inside this one")
	fs.BoolVar(&noDemo, "no-demo", false, "do not seed the demo fleet")
	fs.BoolVar(&simulateToo, "simulate", false, "also run the device simulator against the demo fleet, with a small fault mix")
	fs.Float64Var(&simRate, "simulate-rate", 20, "messages per second of --simulate")
	fs.StringVar(&logLevel, "log-level", "warn", "log level of the stages: debug, info, warn or error")
	fs.StringVar(&viewerListen, "viewer-listen", vcfg.Listen, "HTTP address of the Telemetry Viewer; empty leaves it off")
	fs.StringVar(&vcfg.Token, "viewer-token", "", "token the viewer's page must send to retry publishes and change switches; empty leaves it read-only (also --token)")
	config.MarkSecret(fs, "database-url", "nats-url", "viewer-token")
	app.RegisterPprofFlag(fs, &pprofOn)
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
		traces, err := tracing.ConfigFromEnv(e.lookupEnv)
		if err != nil {
			return fmt.Errorf("%w: %w", config.ErrInvalid, err)
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
		if err := os.MkdirAll(dataDir, 0o750); err != nil {
			return config.Invalid("data-dir", "%v", err)
		}
		// Two ups on one data directory would share the NATS store and
		// overwrite each other's mesh file.
		meshPath := local.MeshFilePath(dataDir)
		if other, err := local.ReadMeshFile(meshPath); err == nil && other.Running() && other.PID != os.Getpid() {
			return config.Invalid("data-dir", "%s is in use by another telemesh up (pid %d); stop it, or give this one a --data-dir of its own", dataDir, other.PID)
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

		spec := meshSpec{host: host, ports: map[string][2]int{}, databaseURL: db.URL, natsURL: natsURL,
			logLevel: logLevel, pprof: pprofOn, viewerListen: viewerListen, viewer: vcfg, tracing: traces}
		for i, s := range app.Stages {
			spec.ports[s] = [2]int{grpcBase + i, adminBase + i}
		}
		var mesh runningMesh
		if processes {
			mesh, err = startProcesses(ctx, e, spec)
		} else {
			mesh, err = startInProcess(ctx, spec, logger)
		}
		if err != nil {
			return err
		}

		info := &local.MeshInfo{PID: os.Getpid(), StartedAt: time.Now().UTC(), DataDir: dataDir, Processes: processes,
			Stages: map[string]local.MeshProcess{}}
		var removed bool
		if info.NATSURL, removed = local.WithoutSecrets(natsURL); removed {
			info.SecretsOmitted = append(info.SecretsOmitted, secretNATSCredentials)
		}
		if info.DatabaseURL, removed = local.WithoutSecrets(db.URL); removed {
			info.SecretsOmitted = append(info.SecretsOmitted, secretDatabasePassword)
		}
		mesh.describe(info)
		if err := local.WriteMeshFile(meshPath, info); err != nil {
			return errors.Join(err, mesh.stop())
		}
		defer func() {
			if err := local.RemoveMeshFile(meshPath, info.PID); err != nil {
				logger.Warn("remove mesh file", "err", err)
			}
		}()

		printUp(e, info, upHints{demo: !noDemo, meshPath: meshPath, viewerToken: vcfg.Token != ""})
		if simulateToo {
			go runSimulator(ctx, natsURL, simRate, logger)
			say("Simulator %.0f msg/s over %d demo devices, with invalid, inactive, duplicate and missing-input messages mixed in", simRate, len(demo.Devices))
		}
		runErr := mesh.wait(ctx)
		if runErr != nil {
			runErr = fmt.Errorf("%w; stopped the rest of the mesh", runErr)
			say("\n%v", runErr)
		} else {
			say("\nstopping: the viewer, then the gateway first and the publisher last; unfinished messages stay in the stream")
		}
		return errors.Join(runErr, mesh.stop())
	}
	return cmd
}

// inProcessMesh is every stage and the viewer inside up's own process.
type inProcessMesh struct {
	mesh         *app.Mesh
	viewerURL    string
	viewerCancel context.CancelFunc
	viewerDone   chan error
	viewerErr    error
	closeViewer  func()
}

// startInProcess starts every stage inside this process, downstream first,
// then the viewer, which reads the stages' logs and outputs.
func startInProcess(ctx context.Context, spec meshSpec, logger *slog.Logger) (*inProcessMesh, error) {
	mesh, err := app.StartMesh(ctx, app.MeshOptions{
		DatabaseURL: spec.databaseURL, NATSURL: spec.natsURL, Host: spec.host, Ports: spec.ports,
		Tune: func(o *app.Options) {
			o.Process.LogFormat, o.Process.LogLevel = "auto", spec.logLevel
			o.Build = buildinfo.Read(version, commit, date)
			o.Process.Tracing = spec.tracing
			o.Process.Pprof = spec.pprof
			o.Process.ShutdownGrace = shutdownGrace
			o.Gateway.Subjects = demo.Subjects
			o.Publisher.Env = "local"
		},
	}, logger)
	if err != nil {
		return nil, err
	}
	m := &inProcessMesh{mesh: mesh}
	if spec.viewerListen == "" {
		return m, nil
	}
	vcfg := spec.viewer
	vcfg.Listen, vcfg.Version, vcfg.Env = spec.viewerListen, version, "local"
	vcfg.Targets = map[string]string{}
	for stage, addr := range mesh.GRPC {
		vcfg.Targets[stage] = addr
	}
	srv, closeViewer, err := openViewer(ctx, vcfg, spec.databaseURL, app.NATS{URL: spec.natsURL}, logger.With("stage", "viewer"))
	if err != nil {
		_ = mesh.Stop()
		return nil, viewerSetupError("viewer-listen", err)
	}
	vctx, cancel := context.WithCancel(ctx)
	m.viewerCancel, m.closeViewer, m.viewerDone = cancel, closeViewer, make(chan error, 1)
	go func() { m.viewerDone <- srv.Run(vctx) }()
	m.viewerURL = srv.URL()
	return m, nil
}

func (m *inProcessMesh) describe(info *local.MeshInfo) {
	for _, s := range app.Stages {
		info.Stages[s] = local.MeshProcess{GRPC: m.mesh.GRPC[s], Admin: m.mesh.Admin[s]}
	}
	if m.viewerURL != "" {
		info.Viewer = &local.MeshViewer{URL: m.viewerURL}
	}
}

func (m *inProcessMesh) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-m.viewerDone:
		m.viewerDone = nil
		m.viewerErr = err
		return fmt.Errorf("the viewer stopped: %v", err)
	}
}

func (m *inProcessMesh) stop() error {
	var errs []error
	if m.viewerCancel != nil {
		m.viewerCancel()
		if m.viewerDone != nil {
			if err := <-m.viewerDone; err != nil {
				errs = append(errs, fmt.Errorf("viewer: %w", err))
			}
		}
		m.closeViewer()
	}
	return errors.Join(append(errs, m.mesh.Stop())...)
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
	wait := retry.WithJitterPercent(20, retry.WithCappedDuration(2*time.Second, retry.NewExponential(100*time.Millisecond)))
	if err := retry.Do(ctx, wait, func(ctx context.Context) error {
		_, err := js.Stream(ctx, app.DefaultOptions(app.Gateway).Gateway.Stream)
		return retry.RetryableError(err)
	}); err != nil {
		return // Every failure is retried: only the end of ctx stops it.
	}
	cfg := simulate.Config{
		Devices: simulate.DemoDevices(len(demo.Devices)), Rate: rate, MessageIDs: true, Seed: time.Now().UnixNano(),
		Faults: simulate.Faults{Invalid: 5, Inactive: 5, DuplicateIDs: 3, UnknownTopic: 1, MalformedJSON: 1, MissingInputs: 10},
	}
	if _, err := simulate.Run(ctx, js, cfg, nil); err != nil && ctx.Err() == nil {
		logger.Error("simulator stopped", "err", err)
	}
}

// upHints is what decides which of up's hints apply.
type upHints struct {
	// demo says the demo fleet was seeded, so its devices can be named.
	demo bool
	// meshPath is this up's mesh file.
	meshPath    string
	viewerToken bool
}

// printUp prints where everything is and what to try next. Nothing it
// prints holds a secret: URLs come from the mesh file, which has none.
func printUp(e env, info *local.MeshInfo, h upHints) {
	if v := info.Viewer; v != nil {
		access := "read-only; set TELEMESH_VIEWER_TOKEN to allow retries and switches"
		if h.viewerToken {
			access = "retries and switches ask for the viewer token"
		}
		fmt.Fprintf(e.stdout, "Viewer    %s (%s)\n", v.URL, access)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	header := "\nSTAGE\tGRPC\tADMIN (metrics, healthz, readyz; pprof with --pprof)"
	if info.Processes {
		header += "\tPID"
	}
	fmt.Fprintln(tw, header)
	for _, s := range app.Stages {
		p := info.Stages[s]
		fmt.Fprintf(tw, "%s\t%s\thttp://%s/metrics", s, p.GRPC, p.Admin)
		if info.Processes {
			fmt.Fprintf(tw, "\t%d", p.PID)
		}
		fmt.Fprintln(tw)
	}
	_ = tw.Flush()

	gw, val := info.Stages[app.Gateway].GRPC, info.Stages[app.Validator].GRPC
	var b strings.Builder
	fmt.Fprintf(&b, "\nTry:\n  grpcurl -plaintext %s list\n  grpcurl -plaintext %s grpc.health.v1.Health/Check\n", gw, val)
	if h.demo {
		fmt.Fprintf(&b, "  grpcurl -plaintext -d '{\"subject\":\"devices.thermo-01.telemetry\",\"payload\":\"%s\",\"dry_run\":true}' %s telemesh.gateway.v1.GatewayService/Ingest\n",
			b64(`{"temp_c": 21.5, "humidity": 40}`), gw)
	}
	b.WriteString("\nNext, in another terminal (the commands read this mesh's addresses from its file):\n")
	fmt.Fprintf(&b, "  export TELEMESH_MESH=%s\n", shellQuote(h.meshPath))
	b.WriteString("  telemesh status\n")
	if h.demo {
		b.WriteString("  telemesh simulate --count 500 --invalid-pct 10 --missing-inputs-pct 10\n")
	} else {
		b.WriteString("  telemesh schema apply FILE    # device types, topics and parameters: see telemesh schema apply --help\n")
		b.WriteString("  telemesh devices add DEVICE_ID --organization ORG --type TYPE\n")
	}
	b.WriteString("  telemesh devices list\n")
	fmt.Fprintf(&b, "  psql %s -c 'select status, count(*) from ingestion_messages group by 1'\n", shellQuote(info.DatabaseURL))
	for _, omitted := range info.SecretsOmitted {
		switch omitted {
		case secretDatabasePassword:
			b.WriteString("  (the database password is neither printed nor in the mesh file: psql and the commands read it from PGPASSWORD or ~/.pgpass)\n")
		case secretNATSCredentials:
			b.WriteString("  (the NATS credentials are neither printed nor in the mesh file: give the commands TELEMESH_NATS_URL)\n")
		}
	}
	b.WriteString("\ntelemesh is running; Ctrl-C stops it.\n")
	fmt.Fprint(e.stdout, b.String())
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-:@,+=", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
