package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
)

// liveMesh is a whole mesh running in this test process, with the demo
// fleet seeded, that the built binary's operator commands are pointed at.
type liveMesh struct {
	db   *testdb.DB
	nats *testnats.Server
	js   jetstream.JetStream
	mesh *app.Mesh
	// env points the binary at the mesh: database, NATS and every stage.
	env []string
}

// startLiveMesh seeds the demo fleet into a fresh database and starts every
// stage on loopback; tune, if not nil, adjusts each stage's options. It
// returns once the gateway's consumer exists.
func startLiveMesh(t *testing.T, tune func(*app.Options)) *liveMesh {
	t.Helper()
	lm := &liveMesh{db: testdb.New(t), nats: testnats.New(t)}
	if err := demo.Seed(t.Context(), lm.db.Pool); err != nil {
		t.Fatalf("seed demo: %v", err)
	}
	// The stream captures the demo fleet's subjects, as under telemesh up.
	demoTune := func(o *app.Options) {
		o.Gateway.Subjects = demo.Subjects
		if tune != nil {
			tune(o)
		}
	}
	m, err := app.StartMesh(t.Context(), app.MeshOptions{DatabaseURL: lm.db.URL, NATSURL: lm.nats.URL(), Tune: demoTune}, logging.Discard())
	if err != nil {
		t.Fatalf("start mesh: %v", err)
	}
	lm.mesh = m
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Errorf("stop mesh: %v", err)
		}
	})
	_, lm.js = lm.nats.Connect(t)
	testutil.Eventually(t, testWait, "the gateway's consumer", func() error {
		_, err := lm.js.Consumer(t.Context(), "TELEMETRY", "telemesh-gateway")
		return err
	})
	lm.env = []string{"TELEMESH_DATABASE_URL=" + lm.db.URL, "TELEMESH_NATS_URL=" + lm.nats.URL(),
		// status and doctor give each check this long: a stage that is
		// down refuses at once, and one slow to answer on a busy machine
		// is not down.
		"TELEMESH_TIMEOUT=30s"}
	for _, stage := range app.Stages {
		lm.env = append(lm.env, "TELEMESH_"+strings.ToUpper(stage)+"_ADDR="+m.GRPC[stage])
	}
	return lm
}

// statusMesh starts a live mesh and returns the environment that points
// status and doctor at it.
func statusMesh(t *testing.T) []string {
	t.Helper()
	return startLiveMesh(t, nil).env
}

func TestStatusJSONListsServingStages(t *testing.T) {
	env := statusMesh(t)
	cmd := exec.CommandContext(t.Context(), telemeshBin, "status", "--json")
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("status --json: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	var rep struct {
		Healthy bool `json:"healthy"`
		Stages  []struct {
			Stage  string `json:"stage"`
			Status string `json:"status"`
		} `json:"stages"`
		Stream *struct {
			Name string `json:"name"`
		} `json:"stream"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if len(rep.Stages) != 5 {
		t.Fatalf("%d stages, want 5:\n%s", len(rep.Stages), out)
	}
	for i, s := range rep.Stages {
		if s.Stage != app.Stages[i] || s.Status != "SERVING" {
			t.Errorf("stage %d = %s %s, want %s SERVING", i, s.Stage, s.Status, app.Stages[i])
		}
	}
	if !rep.Healthy || rep.Stream == nil || rep.Stream.Name != "TELEMETRY" {
		t.Errorf("healthy %v, stream %+v:\n%s", rep.Healthy, rep.Stream, out)
	}
}

func TestDoctorExitCodeWithoutTelemetry(t *testing.T) {
	env := statusMesh(t)
	cmd := exec.CommandContext(t.Context(), telemeshBin, "doctor", "--window", "200ms")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("err = %v, want exit code 3; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "verdict: no telemetry on the captured subjects") || !strings.Contains(string(out), "fix: ") {
		t.Errorf("output lacks the verdict or the fix:\n%s", out)
	}
}

func TestStatusBadSettingExits2(t *testing.T) {
	cmd := exec.CommandContext(t.Context(), telemeshBin, "status", "--validator-addr", "http://x:1")
	cmd.Env = append(os.Environ(), "TELEMESH_DATABASE_URL=postgres://postgres@127.0.0.1:1/x")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "--validator-addr") {
		t.Fatalf("err = %v, want exit code 2 naming --validator-addr; output:\n%s", err, out)
	}
}
