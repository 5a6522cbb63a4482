package bench_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/tracing"
)

// The variables that size a run.
const (
	// EnvMessages is how many messages each throughput run publishes
	// (default 200,000).
	EnvMessages = "TELEMESH_BENCH_MESSAGES"
	// EnvLatencySeconds is how long each paced latency run publishes
	// (default 20).
	EnvLatencySeconds = "TELEMESH_BENCH_LATENCY_SECONDS"
	// EnvPrefill, when set, is how many telemetry rows (with their message
	// and stage rows) the tables hold before one more run of mode all
	// (default: no such run).
	EnvPrefill = "TELEMESH_BENCH_PREFILL"
	// EnvTracePairs is how many pairs of backlog runs, untraced and
	// traced, mode all measures of each shape (default 1): one pair says
	// little on a machine whose runs differ by a fifth from one to the
	// next, the median of several more.
	EnvTracePairs = "TELEMESH_BENCH_TRACE_PAIRS"
	// EnvCPUProfile, when set, is a file name prefix: the in-process mesh
	// of each run writes its CPU profile to <prefix>-<mode>-<n>.pprof, for
	// go tool pprof with the test binary.
	EnvCPUProfile = "TELEMESH_BENCH_CPUPROFILE"
)

// envChild carries a [childSpec] to this test binary started again as the
// in-process mesh.
const envChild = "TELEMESH_BENCH_CHILD"

// childReady is the line the in-process mesh prints once every stage is
// ready.
const childReady = "bench mesh ready"

// settings are the sizes of one run of the harness.
type settings struct {
	messages       int
	latencySeconds int
	prefill        int
	tracePairs     int
}

// currentSettings reads the TELEMESH_BENCH_* variables.
func currentSettings(tb testing.TB) settings {
	tb.Helper()
	s := settings{messages: 200_000, latencySeconds: 20, tracePairs: 1}
	for _, v := range []struct {
		name string
		to   *int
		min  int
	}{{EnvMessages, &s.messages, 1}, {EnvLatencySeconds, &s.latencySeconds, 1}, {EnvPrefill, &s.prefill, 0}, {EnvTracePairs, &s.tracePairs, 1}} {
		raw := os.Getenv(v.name)
		if raw == "" {
			continue
		}
		n, err := strconv.Atoi(strings.ReplaceAll(raw, "_", ""))
		if err != nil || n < v.min {
			tb.Fatalf("%s=%q: want a whole number of at least %d", v.name, raw, v.min)
		}
		*v.to = n
	}
	return s
}

// tuning is how the gateway batches in every run, the same in both
// shapes: batches of 1000, closed after 5 ms when not full, four in
// flight. MaxAckPending 0 keeps the gateway's own sizing (the batches in
// flight and the one gathered next), as in production: a gateway that
// pulls further ahead holds messages nothing keeps alive, and a backlog
// run then has them redelivered after the AckWait.
var tuning = struct {
	batchSize     int
	batchAge      time.Duration
	concurrency   int
	maxAckPending int
	shutdownGrace time.Duration
}{1000, 5 * time.Millisecond, 4, 0, 30 * time.Second}

func TestMain(m *testing.M) {
	if spec := os.Getenv(envChild); spec != "" {
		os.Exit(runChildMesh(spec))
	}
	flag.Parse()
	code := m.Run()
	binaries.remove()
	os.Exit(code)
}

// childSpec is what the in-process mesh runs against.
type childSpec struct {
	DatabaseURL string `json:"database_url"`
	NATSURL     string `json:"nats_url"`
	Mode        string `json:"mode"`
}

// runChildMesh runs every stage in this process, as `telemesh up` does,
// until SIGTERM, and returns the exit code. Here the test binary is the
// process's main, so it handles the signals and reads the OTEL_*
// variables, as telemesh's main does.
func runChildMesh(raw string) int {
	var spec childSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", envChild, err)
		return 2
	}
	traces, err := tracing.ConfigFromEnv(os.LookupEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	app.TuneRuntime() // as telemesh's main does
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	logger, err := logging.New(os.Stderr, "json", "info")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if prefix := os.Getenv(EnvCPUProfile); prefix != "" {
		stopProfile, err := cpuProfile(fmt.Sprintf("%s-%s-%d.pprof", prefix, spec.Mode, time.Now().UnixNano()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		defer stopProfile()
	}
	m, err := app.StartMesh(ctx, app.MeshOptions{
		DatabaseURL: spec.DatabaseURL,
		NATSURL:     spec.NATSURL,
		Tune: func(o *app.Options) {
			o.Process.StageLogMode = spec.Mode
			o.Process.ShutdownGrace = tuning.shutdownGrace
			o.Process.Instance = "bench-" + o.Stage
			o.Process.Tracing = traces
			o.Gateway.BatchSize = tuning.batchSize
			o.Gateway.BatchAge = tuning.batchAge
			o.Gateway.Concurrency = tuning.concurrency
			o.Gateway.MaxAckPending = tuning.maxAckPending
		},
	}, logger)
	if err != nil {
		fmt.Fprintf(os.Stderr, "start mesh: %v\n", err)
		return 1
	}
	fmt.Println(childReady)
	<-ctx.Done()
	if err := m.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop mesh: %v\n", err)
		return 1
	}
	return 0
}

// binaries are telemesh and nats-server, built once per test binary into
// a temporary directory from this module and the versions its go.mod pins.
var binaries = &builds{built: map[string]*build{}}

type builds struct {
	mu    sync.Mutex
	dir   string
	built map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// Packages the harness builds, by binary name.
var buildPackages = map[string]string{
	"telemesh":    "github.com/telemesh/telemesh/cmd/telemesh",
	"nats-server": "github.com/nats-io/nats-server/v2",
}

// binary returns the path of the named binary, building it the first time.
func (bs *builds) binary(tb testing.TB, name string) string {
	tb.Helper()
	bs.mu.Lock()
	if bs.dir == "" {
		dir, err := os.MkdirTemp("", "telemesh-bench-bin-")
		if err != nil {
			bs.mu.Unlock()
			tb.Fatalf("temporary directory for the binaries: %v", err)
		}
		bs.dir = dir
	}
	b := bs.built[name]
	if b == nil {
		b = &build{}
		bs.built[name] = b
	}
	dir := bs.dir
	bs.mu.Unlock()
	b.once.Do(func() {
		b.path = filepath.Join(dir, name)
		// Built as the fault suite builds them, so the two share Go's
		// build cache.
		cmd := exec.Command("go", "build", "-o", b.path, buildPackages[name])
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %w\n%s", buildPackages[name], err, out)
		}
	})
	if b.err != nil {
		tb.Fatalf("cannot build %s: %v", name, b.err)
	}
	return b.path
}

func (bs *builds) remove() {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.dir != "" {
		_ = os.RemoveAll(bs.dir)
	}
}

// cpuProfile starts a CPU profile written to path and returns what stops
// it.
func cpuProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}
