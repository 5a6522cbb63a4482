package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/value"
	"github.com/telemesh/telemesh/services/publisher"
)

// kvRow adds a telemetry row of dev on topic, in state, recorded at.
func kvRow(t *testing.T, db *testdb.DB, org, dev uuid.UUID, topic, state string, recorded time.Time, values string) uuid.UUID {
	t.Helper()
	id := opsMessage(t, db, org, dev, "devices.x."+topic, "", "seq:"+topic+"@1:"+uuid.NewString(), "completed", "", "", nil)
	opsExec(t, db, `insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
			ingestion_message_id, transformed_values, validation_status, processing_state, next_publish_at)
		values ($1, $2, $2, $3, $4, $5, $1, $6, 'valid', $7, now() + interval '1 hour')`,
		id, recorded, org, dev, topic, values, state)
	return id
}

// kvState reads a device's entry from the bucket.
func kvState(t *testing.T, kv jetstream.KeyValue, dev uuid.UUID) (publisher.DeviceState, uint64) {
	t.Helper()
	e, err := kv.Get(t.Context(), dev.String())
	if err != nil {
		t.Fatalf("entry of %s: %v", dev, err)
	}
	var s publisher.DeviceState
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		t.Fatalf("entry of %s: %v\n%s", dev, err, e.Value())
	}
	return s, e.Revision()
}

// replay kv-rebuild rebuilds device states from the processed rows: counts
// first, nothing written on a dry run, the bucket recreated with its
// settings when missing, the filters honoured, and a newer entry left as
// it is.
func TestReplayKVRebuildCommand(t *testing.T) {
	db := testdb.New(t)
	ns := testnats.New(t)
	_, js := ns.Connect(t)
	ctx := t.Context()
	acme, d1 := opsOrg(t, db, "acme", "d1")
	d2 := uuid.New()
	opsExec(t, db, `insert into devices (id, organization_id, device_type_id, external_id)
		select $1, $2, id, 'd2' from device_types where organization_id = $2`, d2, acme)
	globex, g1 := opsOrg(t, db, "globex", "g1")

	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	kvRow(t, db, acme, d1, "telemetry", "processed", t0, `{"t": 20}`)
	latest := kvRow(t, db, acme, d1, "telemetry", "processed", t0.Add(time.Minute), `{"t": 21.5, "f": 70.7}`)
	kvRow(t, db, acme, d1, "telemetry", "publish_failed", t0.Add(2*time.Minute), `{"t": 99}`)
	status := kvRow(t, db, acme, d1, "status", "processed", t0, `{"battery": 80}`)
	// d2 is quiet: its only row is a day old.
	quiet := kvRow(t, db, acme, d2, "telemetry", "processed", t0.Add(-24*time.Hour), `{"t": 5}`)
	old := kvRow(t, db, globex, g1, "telemetry", "processed", t0, `{"t": 1}`)

	env := []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_NATS_URL=" + ns.URL()}
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		out, stderr, code := runBinary(t, env, append([]string{"replay", "kv-rebuild"}, args...)...)
		if code != 0 {
			t.Fatalf("replay kv-rebuild %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, stderr)
		}
		t.Logf("replay kv-rebuild %v:\n%s", args, out)
		return out
	}

	t.Run("dry run counts and writes nothing", func(t *testing.T) {
		out := run(t, "--dry-run")
		if !strings.HasPrefix(out, "3 device(s) with 4 latest processed topic state(s) match") {
			t.Errorf("dry run:\n%s", out)
		}
		if _, err := js.KeyValue(ctx, "device-states"); !errors.Is(err, jetstream.ErrBucketNotFound) {
			t.Errorf("after a dry run the bucket lookup gives %v, want it still missing", err)
		}
	})

	t.Run("organization", func(t *testing.T) {
		out := run(t, "--organization", "acme")
		for _, want := range []string{
			"2 device(s) with 3 latest processed topic state(s) match",
			"created KV bucket device-states",
			"wrote 2 device state(s); 0 already held as new or newer",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		kv, err := js.KeyValue(ctx, "device-states")
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.History() != 1 || st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Storage != jetstream.FileStorage {
			t.Errorf("bucket history %d, storage %v; want the publisher's settings (1, file)",
				st.History(), st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Storage)
		}
		s, _ := kvState(t, kv, d1)
		tel, stat := s.Topics["telemetry"], s.Topics["status"]
		if s.DeviceUUID != d1.String() || s.Organization != "acme" || len(s.Topics) != 2 ||
			tel.MessageID != latest.String() || !tel.RecordedAt.Equal(t0.Add(time.Minute)) || tel.Value("t") != 21.5 || tel.Value("f") != 70.7 ||
			stat.MessageID != status.String() || stat.Value("battery") != 80.0 || s.UpdatedAt.IsZero() {
			t.Errorf("d1 state %+v, want the latest processed row of each topic", s)
		}
		if s, _ := kvState(t, kv, d2); s.Topics["telemetry"].MessageID != quiet.String() {
			t.Errorf("quiet d2 state %+v, want its day-old row", s)
		}
		if _, err := kv.Get(ctx, g1.String()); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("globex's g1 written despite --organization acme: %v", err)
		}
	})

	t.Run("a newer entry is kept", func(t *testing.T) {
		kv, err := js.KeyValue(ctx, "device-states")
		if err != nil {
			t.Fatal(err)
		}
		// The publisher wrote a newer message of g1 meanwhile.
		newer := publisher.DeviceState{DeviceUUID: g1.String(), Organization: "globex", UpdatedAt: time.Now().UTC(),
			Topics: map[string]publisher.TopicState{"telemetry": {
				Values: json.RawMessage(value.Object(map[string]any{"t": 2.0})), MessageID: uuid.Must(uuid.NewV7()).String(), RecordedAt: t0.Add(time.Hour)}}}
		body, _ := json.Marshal(newer)
		if _, err := kv.Create(ctx, g1.String(), body); err != nil {
			t.Fatal(err)
		}
		_, before := kvState(t, kv, g1)
		out := run(t, "--device", "g1")
		if !strings.Contains(out, "wrote 0 device state(s); 1 already held as new or newer") {
			t.Errorf("output:\n%s", out)
		}
		s, after := kvState(t, kv, g1)
		if after != before || s.Topics["telemetry"].MessageID != newer.Topics["telemetry"].MessageID {
			t.Errorf("g1 entry rewritten (revision %d -> %d) with %+v; the rebuilt row %s is older", before, after, s, old)
		}
	})

	t.Run("since does not apply", func(t *testing.T) {
		_, stderr, code := runBinary(t, env, "replay", "kv-rebuild", "--since", "2026-01-02T15:04:05Z")
		if code != 2 || !strings.Contains(stderr, "since") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
}
