package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
)

// opsRun runs the binary against the database at dbURL and returns its
// stdout, stderr and exit code.
func opsRun(t *testing.T, dbURL string, args ...string) (string, string, int) {
	t.Helper()
	return runBinary(t, []string{"TELEMESH_DATABASE_URL=" + dbURL}, args...)
}

// runBinary runs the built binary with env added to this process's
// environment and returns its stdout, stderr and exit code.
func runBinary(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, telemeshBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &exit):
		return stdout.String(), stderr.String(), exit.ExitCode()
	default:
		t.Fatalf("telemesh %v: %v", args, err)
		return "", "", -1
	}
}

// opsExec runs one statement on db, failing the test on error.
func opsExec(t *testing.T, db *testdb.DB, sql string, args ...any) {
	t.Helper()
	if _, err := db.Pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// opsOrg adds an organization with a device type and one device.
func opsOrg(t *testing.T, db *testdb.DB, slug, device string) (org, dev uuid.UUID) {
	t.Helper()
	org, dev = uuid.New(), uuid.New()
	opsExec(t, db, `insert into organizations (id, slug, name) values ($1, $2, $2)`, org, slug)
	opsExec(t, db, `insert into device_types (organization_id, name) values ($1, 'sensor')`, org)
	opsExec(t, db, `insert into devices (id, organization_id, device_type_id, external_id)
		select $1, $2, id, $3 from device_types where organization_id = $2`, dev, org, device)
	return org, dev
}

// opsMessage adds an ingestion message.
func opsMessage(t *testing.T, db *testdb.DB, org, dev uuid.UUID, subject, sourceID, dedupe, status, halted, summary string, payload []byte) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	opsExec(t, db, `insert into ingestion_messages (id, organization_id, device_id, source_subject, source_message_id, dedupe_key,
			raw_payload, status, halted_stage, error_summary, received_at)
		values ($1, $2, $3, $4, nullif($5, ''), $6, $7, $8, nullif($9, ''), nullif($10, ''), now())`,
		id, org, dev, subject, sourceID, dedupe, payload, status, halted, summary)
	return id
}

func TestTraceCommand(t *testing.T) {
	db := testdb.New(t)
	org, dev := opsOrg(t, db, "acme", "d1")
	key := "id:devices.d1.telemetry:m-7"
	id := opsMessage(t, db, org, dev, "devices.d1.telemetry", "m-7", key, "failed_validation", "validate", "t: above max 50", []byte(`{"t": 99}`))
	opsExec(t, db, `insert into ingestion_stage_logs (message_id, dedupe_key, stage, status, duration_us, instance, errors, created_at)
		values ($1, $2, 'ingress', 'completed', 120, 'gw-0', null, now() - interval '2 seconds'),
		       ($1, null, 'validate', 'halted', 80, 'val-1', '["t: above max 50"]', now() - interval '1 second')`, id, key)
	opsExec(t, db, `insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
			ingestion_message_id, validation_status, validation_errors, processing_state, unresolved_values)
		values ($1, now(), now(), $2, $3, 'telemetry', $1, 'invalid', '["t: above max 50"]', 'invalid', '{"dew": "missing input h"}')`,
		id, org, dev)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	opsExec(t, db, `update ingestion_messages set trace_id = $2 where id = $1`, id, traceID)

	for _, ref := range []string{id.String(), key, "m-7"} {
		t.Run("text "+ref, func(t *testing.T) {
			out, stderr, code := opsRun(t, db.URL, "trace", ref)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			for _, want := range []string{id.String(), "failed_validation", "t: above max 50", "devices.d1.telemetry",
				"stages (2)", "ingress", "val-1", `["t: above max 50"]`, "state", "invalid", "missing input h", "trace id           " + traceID} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if strings.Index(out, "gw-0") > strings.Index(out, "val-1") {
				t.Errorf("stage logs out of order:\n%s", out)
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		out, stderr, code := opsRun(t, db.URL, "trace", "--json", key)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var tr struct {
			Message struct {
				ID          string `json:"id"`
				HaltedStage string `json:"halted_stage"`
				TraceID     string `json:"trace_id"`
			} `json:"message"`
			StageLogs []struct{ Stage string } `json:"stage_logs"`
			Telemetry struct {
				ProcessingState string `json:"processing_state"`
			} `json:"telemetry"`
		}
		if err := json.Unmarshal([]byte(out), &tr); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		if tr.Message.ID != id.String() || tr.Message.HaltedStage != "validate" || len(tr.StageLogs) != 2 || tr.Telemetry.ProcessingState != "invalid" || tr.Message.TraceID != traceID {
			t.Errorf("got %+v", tr)
		}
	})
	t.Run("not found", func(t *testing.T) {
		_, stderr, code := opsRun(t, db.URL, "trace", "no-such-message")
		if code != 1 || !strings.Contains(stderr, `"no-such-message"`) || !strings.Contains(stderr, "not found") {
			t.Errorf("exit %d, stderr %q; want 1 and a message naming it", code, stderr)
		}
	})
	t.Run("no database url", func(t *testing.T) {
		cmd := exec.Command(telemeshBin, "trace", "x")
		// Nothing of the machine's: no TELEMESH_* variable, and a
		// temporary directory of its own, where no `telemesh up` left a
		// mesh file to read the URL from.
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "TMPDIR=" + t.TempDir()}
		out, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "database-url") {
			t.Errorf("exit %d: %s", cmd.ProcessState.ExitCode(), out)
		}
	})
}

func TestReplayCommands(t *testing.T) {
	db := testdb.New(t)
	org, dev := opsOrg(t, db, "acme", "d1")
	other, otherDev := opsOrg(t, db, "globex", "g1")
	ctx := context.Background()

	// Two publish_failed rows of acme, one of globex.
	for _, o := range []struct{ org, dev uuid.UUID }{{org, dev}, {org, dev}, {other, otherDev}} {
		id := opsMessage(t, db, o.org, o.dev, "devices.x.telemetry", "", "seq:telemetry@1:"+uuid.NewString(), "completed", "", "", nil)
		opsExec(t, db, `insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
				ingestion_message_id, validation_status, processing_state, failure_reason, publish_attempts, next_publish_at)
			values ($1, now(), now(), $2, $3, 'telemetry', $1, 'valid', 'publish_failed', 'nats: timeout', 3, now() + interval '1 hour')`,
			id, o.org, o.dev)
		// The publisher keeps it in the publish outbox, due in an hour.
		opsExec(t, db, `insert into publish_outbox (id, message_ids, recorded_from, recorded_to, due_at, attempts)
			select gen_random_uuid(), array[id], recorded_at, recorded_at, now() + interval '1 hour', 3
			from device_telemetry_logs where id = $1`, id)
	}
	// due counts the rows an outbox entry makes due now.
	due := func() (n int) {
		t.Helper()
		if err := db.Pool.QueryRow(ctx, `select count(distinct m) from publish_outbox, unnest(message_ids) m
			where due_at <= now()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("publish-failed dry run", func(t *testing.T) {
		out, stderr, code := opsRun(t, db.URL, "replay", "publish-failed", "--organization", "acme", "--dry-run")
		if code != 0 || !strings.HasPrefix(out, "2 publish_failed") || due() != 0 {
			t.Errorf("exit %d, out %q, stderr %q, due %d", code, out, stderr, due())
		}
	})
	t.Run("publish-failed", func(t *testing.T) {
		out, stderr, code := opsRun(t, db.URL, "replay", "publish-failed", "--organization", "acme", "--device", "d1")
		if code != 0 || !strings.HasPrefix(out, "2 publish_failed") || !strings.Contains(out, "made 2 row(s) due") || due() != 2 {
			t.Errorf("exit %d, out %q, stderr %q, due %d", code, out, stderr, due())
		}
	})
	t.Run("bad since", func(t *testing.T) {
		_, stderr, code := opsRun(t, db.URL, "replay", "publish-failed", "--since", "yesterday")
		if code != 2 || !strings.Contains(stderr, "since") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("unknown organization", func(t *testing.T) {
		_, stderr, code := opsRun(t, db.URL, "replay", "publish-failed", "--organization", "nope")
		if code != 1 || !strings.Contains(stderr, `"nope"`) {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})

	// Parked: one of acme (switch on), one of globex (switch off), and one of
	// acme claimed ten minutes ago and never finished.
	opsExec(t, db, `insert into pipeline_switches (organization_id, pipeline_enabled) values ($1, false)`, other)
	opsMessage(t, db, org, dev, "devices.d1.telemetry", "", "seq:telemetry@1:p1", "parked", "", "", []byte("{}"))
	opsMessage(t, db, other, otherDev, "devices.g1.telemetry", "", "seq:telemetry@1:p2", "parked", "", "", []byte("{}"))
	stuck := opsMessage(t, db, org, dev, "devices.d1.telemetry", "", "seq:telemetry@1:p3", "queued", "", "", []byte("{}"))
	opsExec(t, db, `update ingestion_messages set updated_at = now() - interval '10 minutes' where id = $1`, stuck)
	status := func() (s string) {
		t.Helper()
		if err := db.Pool.QueryRow(ctx, `select status from ingestion_messages where id = $1`, stuck).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	t.Run("parked", func(t *testing.T) {
		out, stderr, code := opsRun(t, db.URL, "replay", "parked")
		if code != 0 || !strings.HasPrefix(out, "2 parked message(s), 1 queued") ||
			!strings.Contains(out, "acme: 1 parked, 1 stale queued (switch on") ||
			!strings.Contains(out, "globex: 1 parked, 0 stale queued (switch off") || status() != "queued" {
			t.Errorf("exit %d, out %q, stderr %q, stuck %s", code, out, stderr, status())
		}
	})
	t.Run("parked force", func(t *testing.T) {
		out, stderr, code := opsRun(t, db.URL, "replay", "parked", "--force")
		if code != 0 || !strings.Contains(out, "parked 1 stale queued message(s) again") || status() != "parked" {
			t.Errorf("exit %d, out %q, stderr %q, stuck %s", code, out, stderr, status())
		}
	})

	t.Run("dead-lettered", func(t *testing.T) {
		ns := testnats.New(t)
		_, js := ns.Connect(t)
		stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TELEMETRY", Subjects: []string{"devices.>"}})
		if err != nil {
			t.Fatal(err)
		}
		dl := opsMessage(t, db, org, dev, "devices.d1.telemetry", "m-9", "id:devices.d1.telemetry:m-9", "failed_terminal", "ingress",
			"dead-lettered after 5 deliveries: validator unavailable", []byte(`{"message_id": "m-9", "t": 20}`))

		out, stderr, code := opsRun(t, db.URL, "replay", "dead-lettered", "--dry-run", "--nats-url", ns.URL())
		if code != 0 || !strings.HasPrefix(out, "1 dead letter(s) match") || strings.Contains(out, "replayed") {
			t.Fatalf("dry run: exit %d, out %q, stderr %q", code, out, stderr)
		}
		out, stderr, code = opsRun(t, db.URL, "replay", "dead-lettered", "--organization", "acme", "--nats-url", ns.URL())
		if code != 0 || !strings.Contains(out, "replayed 1 dead letter(s)") {
			t.Fatalf("exit %d, out %q, stderr %q", code, out, stderr)
		}
		m, err := stream.GetLastMsgForSubject(ctx, "devices.d1.telemetry")
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(jetstream.MsgIDHeader) != "replay-"+dl.String() || string(m.Data) != `{"message_id": "m-9", "t": 20}` {
			t.Errorf("published %v %s", m.Header, m.Data)
		}
		var summary string
		if err := db.Pool.QueryRow(ctx, `select error_summary from ingestion_messages where id = $1`, dl).Scan(&summary); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(summary, "validator unavailable (replayed at ") {
			t.Errorf("error_summary %q", summary)
		}
		out, _, _ = opsRun(t, db.URL, "replay", "dead-lettered", "--nats-url", ns.URL())
		if !strings.HasPrefix(out, "0 dead letter(s) match") {
			t.Errorf("second run: %q", out)
		}
	})
}

func TestFlagsCommands(t *testing.T) {
	db := testdb.New(t)
	opsOrg(t, db, "acme", "d1")
	opsOrg(t, db, "globex", "g1")
	for _, step := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"flags", "set", "pipeline.enabled", "off", "--organization", "acme"}, 0, []string{"pipeline.enabled is off for acme"}},
		{[]string{"flags", "set", "publish_analytics", "off"}, 0, []string{"publish_analytics is off globally"}},
		{[]string{"flags", "get"}, 0, []string{"global", "acme", "on (in effect: off)"}},
		{[]string{"flags", "get", "--organization", "globex"}, 0, []string{"globex", "(no row: all on)", "on (in effect: off)"}},
		{[]string{"flags", "set", "pipeline.enabled", "maybe"}, 2, nil},
		{[]string{"flags", "set", "nope", "on"}, 2, nil},
		{[]string{"flags", "set", "pipeline.enabled", "on", "--organization", "nope"}, 1, nil},
	} {
		t.Run(strings.Join(step.args, " "), func(t *testing.T) {
			out, stderr, code := opsRun(t, db.URL, step.args...)
			if code != step.code {
				t.Fatalf("exit %d, want %d: %s%s", code, step.code, out, stderr)
			}
			for _, w := range step.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	out, stderr, code := opsRun(t, db.URL, "flags", "get", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rows []struct {
		Organization string `json:"organization"`
		UpdatedBy    string `json:"updated_by"`
		Switches     struct {
			PipelineEnabled  bool `json:"pipeline_enabled"`
			PublishAnalytics bool `json:"publish_analytics"`
		} `json:"switches"`
		Effective struct {
			PublishAnalytics bool `json:"publish_analytics"`
		} `json:"effective"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rows) != 2 || rows[0].Organization != "" || rows[0].Switches.PublishAnalytics || rows[1].Organization != "acme" ||
		rows[1].Switches.PipelineEnabled || !rows[1].Switches.PublishAnalytics || rows[1].Effective.PublishAnalytics ||
		rows[0].UpdatedBy == "" || rows[0].UpdatedBy == "migration" {
		t.Errorf("got %+v", rows)
	}
}

func TestRetentionCommand(t *testing.T) {
	db := testdb.New(t)
	old := time.Now().UTC().AddDate(0, 0, -100)
	opsExec(t, db, `select telemesh_ensure_partitions('device_telemetry_logs', $1::date, $1::date)`, old)
	opsExec(t, db, `insert into device_telemetry_logs (recorded_at, received_at, device_id, topic, ingestion_message_id,
			validation_status, processing_state)
		values ($1, $1, gen_random_uuid(), 'telemetry', gen_random_uuid(), 'valid', 'processed')`, old)
	opsExec(t, db, `insert into ingestion_messages (source_subject, dedupe_key, status, received_at)
		values ('devices.d1.telemetry', 'seq:s@1:1', 'completed', now() - interval '20 days')`)
	part := "device_telemetry_logs_p" + old.Format("20060102")

	out, stderr, code := opsRun(t, db.URL, "retention", "--dry-run")
	if code != 0 || !strings.Contains(out, "would drop 1 partition(s) ("+part+")") || !strings.Contains(out, "ingestion_messages: cutoff") ||
		!strings.Contains(out, "would delete 1 row(s)") {
		t.Fatalf("dry run: exit %d, out %q, stderr %q", code, out, stderr)
	}
	out, stderr, code = opsRun(t, db.URL, "retention", "--telemetry", "90d", "--messages", "14d", "--stage-logs", "7d")
	if code != 0 || !strings.Contains(out, "dropped 1 partition(s) ("+part+")") || !strings.Contains(out, "ingestion_messages: cutoff") ||
		!strings.Contains(out, "deleted 1 row(s)") {
		t.Fatalf("exit %d, out %q, stderr %q", code, out, stderr)
	}
	out, stderr, code = opsRun(t, db.URL, "retention")
	if code != 0 || !strings.Contains(out, "dropped 0 partition(s) (none)") {
		t.Fatalf("again: exit %d, out %q, stderr %q", code, out, stderr)
	}
	_, stderr, code = opsRun(t, db.URL, "retention", "--telemetry", "forever")
	if code != 2 || !strings.Contains(stderr, "telemetry") {
		t.Errorf("bad age: exit %d, stderr %q", code, stderr)
	}
}
