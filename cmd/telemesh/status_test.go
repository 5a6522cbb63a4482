package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
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

// waitPending waits until the gateway's consumer holds want messages not
// yet delivered.
func (lm *liveMesh) waitPending(t *testing.T, want uint64) {
	t.Helper()
	testutil.Eventually(t, testWait, fmt.Sprintf("%d messages pending in the consumer", want), func() error {
		cons, err := lm.js.Consumer(t.Context(), "TELEMETRY", "telemesh-gateway")
		if err != nil {
			return err
		}
		info, err := cons.Info(t.Context())
		if err != nil {
			return err
		}
		if info.NumPending != want {
			return fmt.Errorf("%d pending", info.NumPending)
		}
		return nil
	})
}

// A pipeline switched off on purpose is paused, not unhealthy: status and
// doctor say since when, by whom and how many messages wait, and exit 6,
// which is neither healthy (0) nor a fault (1). An organization switched
// off is shown with its parked messages without pausing the mesh.
func TestStatusAndDoctorWhilePaused(t *testing.T) {
	lm := startLiveMesh(t, nil)

	opsExec(t, lm.db, `insert into pipeline_switches (organization_id, pipeline_enabled, updated_by)
		select id, false, 'globex-admin' from organizations where slug = 'globex'`)
	// The gateway applies the organization's switch within a second; until
	// then a message may still go through, so publish until two are parked.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; lm.count(t, `select count(*) from ingestion_messages where status = 'parked'`) < 2; i++ {
		if time.Now().After(deadline) {
			t.Fatal("no two globex messages parked within 30s")
		}
		if _, err := lm.js.Publish(t.Context(), "energy.main-energy-meter-01.telemetry",
			fmt.Appendf(nil, `{"message_id": "org-off-%d", "power_w": 1500}`, i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	parked := lm.count(t, `select count(*) from ingestion_messages where status = 'parked'`)

	out, stderr, code := lm.run(t, "status")
	if code != 0 {
		t.Fatalf("status with one organization switched off: exit %d, want 0\n%s\n%s", code, out, stderr)
	}
	if !strings.Contains(out, "organization globex switched off since ") ||
		!strings.Contains(out, "by globex-admin") || !strings.Contains(out, fmt.Sprintf("%d parked", parked)) {
		t.Errorf("status does not show globex switched off by globex-admin with %d parked:\n%s", parked, out)
	}

	opsExec(t, lm.db, `update pipeline_switches set pipeline_enabled = false, updated_by = 'ops-oncall' where organization_id is null`)
	lm.waitGatewayPaused(t)
	for i := range 3 {
		if _, err := lm.js.Publish(t.Context(), "devices.thermo-01.telemetry",
			fmt.Appendf(nil, `{"message_id": "paused-%d", "temp_c": 20}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	lm.waitPending(t, 3)

	out, stderr, code = lm.run(t, "status")
	t.Logf("status while paused: exit %d\n%s%s", code, out, stderr)
	if code != 6 {
		t.Errorf("status while paused: exit %d, want 6", code)
	}
	for _, want := range []string{"paused since ", "by ops-oncall", "3 messages wait", "organization globex switched off"} {
		if !strings.Contains(out, want) {
			t.Errorf("status while paused lacks %q", want)
		}
	}
	if strings.Contains(out+stderr, "unhealthy") {
		t.Errorf("status calls a pause unhealthy")
	}

	out, _, code = lm.run(t, "status", "--json")
	var rep struct {
		State string `json:"state"`
		Pause *struct {
			By      string `json:"by"`
			Backlog uint64 `json:"backlog"`
		} `json:"pause"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if code != 6 || rep.State != "paused" || rep.Pause == nil || rep.Pause.By != "ops-oncall" || rep.Pause.Backlog != 3 {
		t.Errorf("status --json while paused: exit %d, want 6 with state paused by ops-oncall, backlog 3:\n%s", code, out)
	}

	out, stderr, code = lm.run(t, "doctor", "--window", "300ms")
	t.Logf("doctor while paused: exit %d\n%s%s", code, out, stderr)
	if code != 6 || !strings.Contains(out, "verdict: paused") || !strings.Contains(out, "by ops-oncall") ||
		!strings.Contains(out, "telemesh flags set pipeline.enabled on") {
		t.Errorf("doctor while paused: exit %d, want 6 with verdict paused, who paused it and how to resume", code)
	}
}

// tableLines returns the lines of out that begin with prefix, spaces
// squeezed.
func tableLines(out, prefix string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.Join(strings.Fields(l), " ")
		if strings.HasPrefix(l, prefix) {
			lines = append(lines, l)
		}
	}
	return lines
}

// status and doctor group failures by cause, whatever their texts:
// payloads cut at different offsets, unknown devices and topics on
// different subjects, rule violations of different parameters, and
// publishes that failed for different devices.
func TestStatusAndDoctorGroupFailuresByCode(t *testing.T) {
	lm := startLiveMesh(t, nil)
	publish := func(subject, id, payload string) {
		t.Helper()
		msg := nats.NewMsg(subject)
		msg.Data = []byte(payload)
		msg.Header.Set("Nats-Msg-Id", id)
		if _, err := lm.js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range []string{`{"temp_c": 1`, `{"temp_c": 12, "x": [1, 2`, `{"temp_c": 123, "note": "cut here`} {
		publish("devices.thermo-01.telemetry", fmt.Sprintf("cut-%d", i), p)
	}
	for i := range 3 {
		publish(fmt.Sprintf("devices.ghost-%d.telemetry", i), fmt.Sprintf("ghost-%d", i), `{"temp_c": 1}`)
	}
	for _, d := range []string{"thermo-01", "thermo-02"} {
		publish("devices."+d+".nosuchtopic", "topic-"+d, `{"temp_c": 1}`)
	}
	publish("devices.thermo-01.telemetry", "max-1", `{"temp_c": 500}`)
	publish("devices.thermo-02.telemetry", "max-2", `{"temp_c": 20, "humidity": 150}`)
	lm.waitCount(t, 10, `select count(*) from ingestion_messages where status in ('failed_terminal', 'failed_validation')`)

	out, stderr, code := lm.run(t, "status")
	t.Logf("status: exit %d\n%s%s", code, out, stderr)
	if ingress := tableLines(out, "ingress halted"); len(ingress) != 3 {
		t.Errorf("ingress halted in %d lines, want 3: the cut payloads, the unknown devices, the unknown topics", len(ingress))
	}
	for _, want := range []string{
		"ingress halted 3 invalid_json payload is not a JSON object: unexpected end of JSON input at offset ",
		`ingress halted 3 unknown_device subject "devices.ghost-`,
		`ingress halted 2 unknown_topic subject "devices.thermo-0`,
	} {
		if len(tableLines(out, want)) != 1 {
			t.Errorf("status lacks a line beginning %q", want)
		}
	}
	if validate := tableLines(out, "validate halted"); len(validate) != 1 || !strings.HasPrefix(validate[0], "validate halted 2 max validation failed: ") {
		t.Errorf("validate halted in %v, want one line of 2: the maxima", validate)
	}

	if err := lm.js.DeleteKeyValue(t.Context(), "device-states"); err != nil {
		t.Fatal(err)
	}
	publish("devices.thermo-01.telemetry", "kv-1", `{"temp_c": 20}`)
	publish("devices.thermo-02.telemetry", "kv-2", `{"temp_c": 21}`)
	lm.waitCount(t, 2, countPubFailed)
	out, _, code = lm.run(t, "doctor", "--window", "300ms")
	t.Logf("doctor: exit %d\n%s", code, out)
	if reasons := tableLines(out, "2 × kv_unavailable (e.g. "); code != 5 || len(reasons) != 1 || len(tableLines(out, "1 ×")) != 0 {
		t.Errorf("doctor: exit %d, publish failures in %v; want exit 5 and one line of 2 × kv_unavailable", code, reasons)
	}
}
