package bench_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/app"
)

// The two shapes the harness measures.
const (
	// inProcess is every stage in one process, as `telemesh up` runs them.
	inProcess = "in-process"
	// production is every stage its own `telemesh serve <stage>` process.
	production = "production"
)

// mesh is a running pipeline in one of the two shapes.
type mesh struct {
	shape string
	// procs are its processes by name: "telemesh" for the in-process
	// shape, each stage's name for the production shape.
	procs map[string]*proc
	// order is the order to stop them in: the gateway first, so no stage
	// is stopped while one before it still sends to it.
	order []string
}

// startMesh starts the pipeline in the given shape against the database
// and nats-server, in stage-log mode mode, with env added to the
// environment of its processes (the OTEL_* settings of a traced run), and
// returns once every stage is ready (its catalog loaded). It is stopped
// when the test ends.
func startMesh(tb testing.TB, shape, databaseURL, natsURL, mode string, env []string) *mesh {
	tb.Helper()
	var m *mesh
	switch shape {
	case inProcess:
		m = startInProcess(tb, databaseURL, natsURL, mode, env)
	case production:
		m = startProduction(tb, databaseURL, natsURL, mode, env)
	default:
		tb.Fatalf("unknown shape %q", shape)
	}
	tb.Cleanup(func() { m.stop(tb) })
	return m
}

// startInProcess starts this test binary again as the in-process mesh.
func startInProcess(tb testing.TB, databaseURL, natsURL, mode string, extra []string) *mesh {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("the test binary: %v", err)
	}
	spec, _ := json.Marshal(childSpec{DatabaseURL: databaseURL, NATSURL: natsURL, Mode: mode})
	env := append([]string{envChild + "=" + string(spec)}, extra...)
	if prefix := os.Getenv(EnvCPUProfile); prefix != "" {
		env = append(env, EnvCPUProfile+"="+prefix)
	}
	p := startProc(tb, "telemesh", exe, env)
	// StartMesh waits up to a minute for every stage's readiness.
	if _, ok := p.waitLine(func(l string) bool { return l == childReady }, 3*time.Minute); !ok {
		tb.Fatalf("the in-process mesh was not ready within 3 minutes:\n%s", p.output())
	}
	return &mesh{shape: inProcess, procs: map[string]*proc{"telemesh": p}, order: []string{"telemesh"}}
}

// startProduction starts every stage as its own `telemesh serve` process,
// downstream first (publisher, persister, deriver, validator, gateway),
// each told its next hops' addresses, with the flags and environment a
// deployment gives them.
func startProduction(tb testing.TB, databaseURL, natsURL, mode string, extra []string) *mesh {
	tb.Helper()
	bin := binaries.binary(tb, "telemesh")
	m := &mesh{shape: production, procs: map[string]*proc{}}
	grpcAddr, adminAddr := map[string]string{}, map[string]string{}
	// Secrets go in the environment, as the chart gives them.
	env := append([]string{"TELEMESH_DATABASE_URL=" + databaseURL, "TELEMESH_NATS_URL=" + natsURL}, extra...)
	for i := len(app.Stages) - 1; i >= 0; i-- {
		stage := app.Stages[i]
		args := []string{"serve", stage, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--log-format", "json", "--stage-log-mode", mode, "--shutdown-grace", tuning.shutdownGrace.String(),
			"--instance", "bench-" + stage}
		if stage == app.Gateway {
			args = append(args, "--batch-size", strconv.Itoa(tuning.batchSize), "--batch-age", tuning.batchAge.String(),
				"--concurrency", strconv.Itoa(tuning.concurrency), "--max-ack-pending", strconv.Itoa(tuning.maxAckPending))
		}
		for _, next := range app.NextHops[stage] {
			args = append(args, "--"+next+"-addr", grpcAddr[next])
		}
		p := startProc(tb, stage, bin, env, args...)
		line, ok := p.waitLine(func(l string) bool { return strings.Contains(l, `"msg":"serving"`) }, 2*time.Minute)
		if !ok {
			tb.Fatalf("%s not serving within 2 minutes:\n%s", stage, p.output())
		}
		var rec struct {
			GRPC  string `json:"grpc"`
			Admin string `json:"admin"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.GRPC == "" || rec.Admin == "" {
			tb.Fatalf("%s: cannot read its addresses from %q: %v", stage, line, err)
		}
		grpcAddr[stage], adminAddr[stage] = rec.GRPC, rec.Admin
		m.procs[stage] = p
	}
	m.order = append(m.order, app.Stages...)
	// A stage serves before its catalog has loaded; /readyz says when it
	// has.
	for _, stage := range app.Stages {
		waitReady(tb, stage, adminAddr[stage], m.procs[stage])
	}
	return m
}

// waitReady waits until the stage's /readyz answers 200.
func waitReady(tb testing.TB, stage, admin string, p *proc) {
	tb.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := client.Get("http://" + admin + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if p.exited() || time.Now().After(deadline) {
			tb.Fatalf("%s not ready within 2 minutes (last: %v):\n%s", stage, errOrStatus(err, resp), p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func errOrStatus(err error, resp *http.Response) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// pids returns the process id of each of the mesh's processes.
func (m *mesh) pids() map[string]int {
	out := map[string]int{}
	for name, p := range m.procs {
		out[name] = p.pid()
	}
	return out
}

// exited returns an error naming the processes that ended on their own,
// with their output, or nil.
func (m *mesh) exited() error {
	var b strings.Builder
	for _, name := range m.order {
		if p := m.procs[name]; p.exited() {
			fmt.Fprintf(&b, "%s exited (%v):\n%s\n", name, p.exitErr(), p.output())
		}
	}
	if b.Len() == 0 {
		return nil
	}
	return fmt.Errorf("%s", b.String())
}

// logs returns the end of every process's output, for a failure message.
func (m *mesh) logs() string {
	var b strings.Builder
	for _, name := range m.order {
		fmt.Fprintf(&b, "==== %s\n%s\n", name, m.procs[name].output())
	}
	return b.String()
}

// stop stops the processes gracefully in order and reports one that did
// not stop cleanly within its grace.
func (m *mesh) stop(tb testing.TB) {
	tb.Helper()
	for _, name := range m.order {
		p := m.procs[name]
		if p.exited() {
			continue
		}
		if !p.terminate(tuning.shutdownGrace + 30*time.Second) {
			tb.Errorf("%s did not stop cleanly on SIGTERM:\n%s", name, p.output())
		}
	}
}
