package pipelinestate

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/health"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/natsx"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
)

// mesh is a seeded database, an in-process NATS server and a running mesh.
type mesh struct {
	db   *testdb.DB
	ns   *testnats.Server
	js   jetstream.JetStream
	mesh *app.Mesh
}

func startMesh(t *testing.T) *mesh {
	t.Helper()
	m := &mesh{db: testdb.New(t), ns: testnats.New(t)}
	seed(t, m.db)
	nc, err := nats.Connect(m.ns.URL())
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	m.js, _ = jetstream.New(nc)
	logger := logging.Discard()
	if os.Getenv("TELEMESH_TEST_LOG") != "" {
		logger, _ = logging.New(os.Stderr, "text", "debug")
	}
	mm, err := app.StartMesh(t.Context(), app.MeshOptions{
		DatabaseURL: m.db.URL,
		NATSURL:     m.ns.URL(),
		Tune: func(o *app.Options) {
			o.Process.ShutdownGrace = 10 * time.Second
			o.Gateway.BatchAge = 2 * time.Millisecond
			o.Publisher.RetryEvery = 200 * time.Millisecond
			o.Publisher.RetryBase = 200 * time.Millisecond
			o.Publisher.RetryMax = time.Second
		},
	}, logger)
	if err != nil {
		t.Fatalf("start mesh: %v", err)
	}
	m.mesh = mm
	t.Cleanup(func() {
		if err := mm.Stop(); err != nil {
			t.Errorf("stop mesh: %v", err)
		}
	})
	testutil.Eventually(t, testWait, "stream TELEMETRY and consumer exist", func() error {
		_, err := m.js.Consumer(t.Context(), "TELEMETRY", "telemesh-gateway")
		return err
	})
	return m
}

// seed inserts one organization with an active thermometer, meter-01.
func seed(t *testing.T, db *testdb.DB) {
	t.Helper()
	ctx := t.Context()
	org, dt, topic, dev := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`insert into organizations (id, slug, name) values ($1, 'acme', 'Acme')`, []any{org}},
		{`insert into device_types (id, organization_id, name, base_topic) values ($1, $2, 'thermometer', 'devices')`, []any{dt, org}},
		{`insert into device_type_topics (id, device_type_id, suffix) values ($1, $2, 'telemetry')`, []any{topic, dt}},
		{`insert into parameter_definitions (device_type_topic_id, key, json_path, data_type, required, critical, validation_rules, mutation_expression, sequence) values
			($1, 'temp_c', '$.temp_c', 'decimal', true, true, '{"min": -50, "max": 150}', null, 1)`, []any{topic}},
		{`insert into devices (id, organization_id, device_type_id, external_id, is_active) values ($1, $2, $3, 'meter-01', true)`, []any{dev, org, dt}},
	} {
		if _, err := db.Pool.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatalf("seed: %v\n%s", err, q.sql)
		}
	}
}

func (m *mesh) publish(t *testing.T, n int, prefix string) {
	t.Helper()
	for i := range n {
		msg := nats.NewMsg("devices.meter-01.telemetry")
		msg.Data = []byte(`{"temp_c": 10}`)
		msg.Header.Set("Nats-Msg-Id", fmt.Sprintf("%s-%d", prefix, i))
		if _, err := m.js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
}

func (m *mesh) count(t *testing.T, sql string) int {
	t.Helper()
	var n int
	if err := m.db.Pool.QueryRow(t.Context(), sql).Scan(&n); err != nil {
		t.Fatalf("count: %v\n%s", err, sql)
	}
	return n
}

func (m *mesh) config() Config {
	cfg := DefaultConfig()
	cfg.DatabaseURL = m.db.URL
	cfg.NATSURL = m.ns.URL()
	// A stage that is down refuses at once; one that is slow to answer
	// on a busy machine is not down.
	cfg.Timeout = 30 * time.Second
	cfg.Targets = map[string]string{}
	for stage, addr := range m.mesh.GRPC {
		cfg.Targets[stage] = addr
	}
	return cfg
}

// testWait bounds each wait on the mesh and each check status and doctor make:
// generous, because on a busy machine a healthy stage can take seconds to
// answer, and a passing test never waits it out.
const testWait = 2 * time.Minute

// waitCount waits until the query's count is want.
func (m *mesh) waitCount(t *testing.T, want int, what, sql string) {
	t.Helper()
	testutil.Eventually(t, testWait, what, func() error {
		if n := m.count(t, sql); n != want {
			return fmt.Errorf("%d, want %d", n, want)
		}
		return nil
	})
}

func doctor(t *testing.T, cfg Config, opts DoctorOptions) *Verdict {
	t.Helper()
	if opts.Window == 0 {
		opts.Window = 200 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(t.Context(), testWait)
	defer cancel()
	v, err := Doctor(ctx, cfg, opts)
	if err != nil {
		t.Fatalf("doctor: %v", err)
	}
	t.Logf("branch %q exit %d\n%s\nfix: %s", v.Branch, v.ExitCode, strings.Join(v.Evidence, "\n"), v.Fix)
	return v
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// The decision tree's branches on one mesh, from nothing published to a
// deleted KV bucket.
func TestDoctorBranches(t *testing.T) {
	m := startMesh(t)

	t.Run("nothing published", func(t *testing.T) {
		v := doctor(t, m.config(), DoctorOptions{})
		if v.Branch != BranchNoTelemetry || v.ExitCode != ExitNoTelemetry {
			t.Fatalf("branch %q exit %d, want %q exit %d", v.Branch, v.ExitCode, BranchNoTelemetry, ExitNoTelemetry)
		}
	})

	t.Run("healthy after valid messages", func(t *testing.T) {
		m.publish(t, 3, "ok")
		m.waitCount(t, 3, "3 rows processed", `select count(*) from device_telemetry_logs where processing_state = 'processed'`)
		v := doctor(t, m.config(), DoctorOptions{ExpectSubject: "devices.meter-01.telemetry"})
		if v.Branch != BranchHealthy || v.ExitCode != 0 {
			t.Fatalf("branch %q exit %d, want healthy", v.Branch, v.ExitCode)
		}
		if !strings.Contains(strings.Join(v.Evidence, "\n"), "a test write to KV bucket device-states succeeded") {
			t.Errorf("evidence lacks the test write: %v", v.Evidence)
		}
		rep, err := Gather(t.Context(), m.config())
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Healthy() {
			t.Errorf("report unhealthy: %v", rep.Problems)
		}
		for _, s := range rep.Stages {
			if s.Status != health.Serving {
				t.Errorf("stage %s is %s", s.Stage, s.Status)
			}
		}
		var completed int
		for _, c := range rep.Throughput {
			if c.Stage == "persist" && c.Status == "completed" {
				completed += c.Count
			}
		}
		if completed != 3 {
			t.Errorf("persist completed %d in the throughput, want 3: %+v", completed, rep.Throughput)
		}
	})

	t.Run("subject not captured", func(t *testing.T) {
		v := doctor(t, m.config(), DoctorOptions{ExpectSubject: "sensors.meter-01.telemetry"})
		if v.Branch != BranchNoTelemetry || v.ExitCode != ExitNoTelemetry {
			t.Fatalf("branch %q exit %d, want %q", v.Branch, v.ExitCode, BranchNoTelemetry)
		}
	})

	t.Run("validator down", func(t *testing.T) {
		cfg := m.config()
		cfg.Targets["validator"] = closedPort(t)
		v := doctor(t, cfg, DoctorOptions{})
		if v.Branch != "stage validator unreachable" || v.ExitCode != ExitNotStored {
			t.Fatalf("branch %q exit %d, want stage validator unreachable exit %d", v.Branch, v.ExitCode, ExitNotStored)
		}
		rep, err := Gather(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Healthy() {
			t.Errorf("report healthy with the validator down")
		}
	})

	t.Run("KV bucket deleted", func(t *testing.T) {
		if err := m.js.DeleteKeyValue(t.Context(), "device-states"); err != nil {
			t.Fatal(err)
		}
		m.publish(t, 3, "kvdown")
		m.waitCount(t, 3, "3 rows publish_failed", `select count(*) from device_telemetry_logs where processing_state = 'publish_failed'`)
		v := doctor(t, m.config(), DoctorOptions{})
		if v.Branch != BranchPublishing || v.ExitCode != ExitPublishing {
			t.Fatalf("branch %q exit %d, want %q exit %d", v.Branch, v.ExitCode, BranchPublishing, ExitPublishing)
		}
		if !strings.Contains(strings.Join(v.Evidence, "\n"), "publish_failed") {
			t.Errorf("evidence does not name publish_failed rows: %v", v.Evidence)
		}
		if v.Report == nil || len(v.Report.PublishFailedReasons) == 0 {
			t.Errorf("no publish_failed reasons in the report")
		}
		want := "telemesh replay kv-rebuild --nats-url " + m.ns.URL() + " --kv-bucket device-states --nats-replicas 1"
		if !strings.Contains(v.Fix, want) {
			t.Errorf("fix %q does not give the command that recreates the bucket: %s", v.Fix, want)
		}
	})
}

func TestCovers(t *testing.T) {
	tests := []struct {
		p, s string
		want bool
	}{
		{"devices.>", "devices.a.telemetry", true},
		{"devices.>", "devices", false},
		{"devices.*.telemetry", "devices.a.telemetry", true},
		{"devices.*.telemetry", "devices.a.status", false},
		{"devices.*", "devices.a.b", false},
		{"devices.>", "devices.*.telemetry", true},
		{"devices.*.telemetry", "devices.>", false},
	}
	for _, tt := range tests {
		if got := covers(tt.p, tt.s); got != tt.want {
			t.Errorf("covers(%q, %q) = %v, want %v", tt.p, tt.s, got, tt.want)
		}
	}
}

// The command doctor prints to make the bucket again is runnable as
// printed and never shows a password.
func TestKVRebuildCommand(t *testing.T) {
	ns := testnats.New(t)
	_, js := ns.Connect(t)
	for _, tt := range []struct {
		url  string
		auth natsx.Auth
		want string
	}{
		{"nats://127.0.0.1:4222", natsx.Auth{},
			"telemesh replay kv-rebuild --nats-url nats://127.0.0.1:4222 --kv-bucket device-states --nats-replicas 1"},
		{"nats://ops:s3cret@a:4222,nats://ops:s3cret@b:4222", natsx.Auth{},
			"telemesh replay kv-rebuild --nats-url nats://a:4222,nats://b:4222 --kv-bucket device-states --nats-replicas 1"},
		{"nats://a:4222", natsx.Auth{CredsFile: "/etc/telemesh/ops.creds"},
			"telemesh replay kv-rebuild --nats-url nats://a:4222 --kv-bucket device-states --nats-replicas 1 --nats-creds-file /etc/telemesh/ops.creds"},
		{"nats://a:4222", natsx.Auth{User: "ops", Password: "s3cret"},
			"telemesh replay kv-rebuild --nats-url nats://a:4222 --kv-bucket device-states --nats-replicas 1 --nats-user ops"},
	} {
		cfg := DefaultConfig()
		cfg.NATSURL, cfg.NATSAuth = tt.url, tt.auth
		if got := kvRebuildCommand(t.Context(), cfg, js); got != tt.want {
			t.Errorf("%s %+v:\n got %s\nwant %s", tt.url, tt.auth, got, tt.want)
		}
	}
}
