package persister

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/bound"
	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testutil"
)

// randomText returns n random letters and digits, which Postgres cannot
// compress.
func randomText(n int) string {
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(rand.Text())
	}
	return b.String()[:n]
}

func TestFirstOfKey(t *testing.T) {
	msgs := []Message{{DedupeKey: "a"}, {DedupeKey: "b"}, {DedupeKey: "a"}, {DedupeKey: "c"}, {DedupeKey: "b"}}
	got := FirstOfKey(msgs)
	want := []int{0, 1, 0, 3, 1}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("FirstOfKey = %v, want %v", got, want)
		}
	}
}

func TestPersist(t *testing.T) {
	db := testdb.New(t)
	store := NewStore(db.Pool, 30*time.Second).WithStoredPayloadLimit(1024)
	logs, _ := stagelog.New(stagelog.ModeAll, 1, "test")
	ctx := t.Context()
	device := uuid.New()
	msg := func(key string, status pipeline.Status, telemetry bool) Message {
		m := Message{
			ID: uuid.Must(uuid.NewV7()), DedupeKey: key, SourceSubject: "devices.d.telemetry", DeviceID: device,
			Status: status, ReceivedAt: time.Now(), RawPayload: []byte(`{"temp_c": 1}`),
		}
		if telemetry {
			m.Telemetry = &Telemetry{Topic: "telemetry", RecordedAt: time.Now(), State: pipeline.StatePending, Valid: true,
				Mutated: `{"temp_c":3}`, Transformed: `{"temp_c":3,"temp_f":37.4}`}
		}
		return m
	}
	count := func(sql string, args ...any) int {
		var n int
		if err := db.Pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	tests := []struct {
		name  string
		batch []Message
		dry   bool
		want  []Disposition
		check func(t *testing.T, batch []Message, res []Result)
	}{
		{
			name:  "new messages are inserted with their telemetry rows",
			batch: []Message{msg("k1", pipeline.StatusCompleted, true), msg("k2", pipeline.StatusFailedTerminal, false)},
			want:  []Disposition{Inserted, Inserted},
			check: func(t *testing.T, batch []Message, _ []Result) {
				if n := count(`select count(*) from device_telemetry_logs where id = $1 and processing_state = 'pending'
					and exists (select 1 from publish_outbox o where $1 = any(o.message_ids) and o.due_at > now())`, batch[0].ID); n != 1 {
					t.Errorf("telemetry rows for k1 = %d", n)
				}
				if n := count(`select count(*) from device_telemetry_logs where ingestion_message_id = $1`, batch[1].ID); n != 0 {
					t.Errorf("failed_terminal got a telemetry row")
				}
			},
		},
		{
			name:  "a key already persisted is a duplicate and changes nothing",
			batch: []Message{msg("k1", pipeline.StatusCompleted, true)},
			want:  []Disposition{Duplicate},
			check: func(t *testing.T, batch []Message, res []Result) {
				if res[0].OriginalID == batch[0].ID || res[0].OriginalStatus != pipeline.StatusCompleted {
					t.Errorf("duplicate result = %+v", res[0])
				}
				if n := count(`select count(*) from device_telemetry_logs`); n != 1 {
					t.Errorf("%d telemetry rows, want 1", n)
				}
			},
		},
		{
			name:  "a key twice in one batch: the second is a duplicate of the first",
			batch: []Message{msg("k3", pipeline.StatusCompleted, true), msg("k3", pipeline.StatusCompleted, true)},
			want:  []Disposition{Inserted, Duplicate},
			check: func(t *testing.T, batch []Message, res []Result) {
				if res[1].OriginalID != batch[0].ID {
					t.Errorf("in-batch duplicate names %s, want %s", res[1].OriginalID, batch[0].ID)
				}
			},
		},
		{
			name:  "a parked message is stored without telemetry",
			batch: []Message{msg("k4", pipeline.StatusParked, false)},
			want:  []Disposition{Inserted},
		},
		{
			name:  "the parked message is resumed, keeping its id",
			batch: []Message{msg("k4", pipeline.StatusCompleted, true)},
			want:  []Disposition{Resumed},
			check: func(t *testing.T, batch []Message, res []Result) {
				if n := count(`select count(*) from ingestion_messages where dedupe_key = 'k4' and status = 'completed' and id = $1`, res[0].OriginalID); n != 1 {
					t.Errorf("parked row not completed")
				}
				if n := count(`select count(*) from device_telemetry_logs where id = $1`, res[0].OriginalID); n != 1 {
					t.Errorf("resumed row has no telemetry row under the parked id")
				}
			},
		},
		{
			name:  "another message is parked",
			batch: []Message{msg("p8", pipeline.StatusParked, false)},
			want:  []Disposition{Inserted},
		},
		{
			name:  "new, known and parked keys in one batch: copied, left, resumed",
			batch: []Message{msg("n7", pipeline.StatusCompleted, true), msg("k1", pipeline.StatusCompleted, true), msg("p8", pipeline.StatusCompleted, true)},
			want:  []Disposition{Inserted, Duplicate, Resumed},
			check: func(t *testing.T, batch []Message, res []Result) {
				if n := count(`select count(*) from ingestion_messages where dedupe_key = 'n7' and id = $1 and status = 'completed'`, batch[0].ID); n != 1 {
					t.Errorf("new key n7 not stored under its id")
				}
				if n := count(`select count(*) from ingestion_messages where dedupe_key = 'p8' and status = 'completed' and id = $1`, res[2].OriginalID); n != 1 {
					t.Errorf("parked p8 not completed under its parked id")
				}
			},
		},
		{
			name:  "dry run writes nothing",
			batch: []Message{msg("k5", pipeline.StatusCompleted, true), msg("k1", pipeline.StatusCompleted, true)},
			dry:   true,
			want:  []Disposition{Inserted, Duplicate},
			check: func(t *testing.T, _ []Message, _ []Result) {
				if n := count(`select count(*) from ingestion_messages where dedupe_key = 'k5'`); n != 0 {
					t.Errorf("dry run wrote a message")
				}
			},
		},
		{
			name: "a payload jsonb refuses is stored without its jsonb copy",
			batch: func() []Message {
				m := msg("k6", pipeline.StatusCompleted, true)
				m.RawPayload = []byte(`{"s": "\ud800"}`)
				return []Message{m}
			}(),
			want: []Disposition{Inserted},
			check: func(t *testing.T, batch []Message, _ []Result) {
				if n := count(`select count(*) from device_telemetry_logs where id = $1 and raw_payload is null`, batch[0].ID); n != 1 {
					t.Errorf("row not stored without raw jsonb")
				}
				if n := count(`select count(*) from ingestion_messages where id = $1 and raw_payload = $2`, batch[0].ID, batch[0].RawPayload); n != 1 {
					t.Errorf("raw bytes not kept")
				}
			},
		},
		{
			name: "a message Postgres refuses even alone is recorded failed_terminal; the rest of its batch is stored",
			batch: func() []Message {
				bad := msg("k7", pipeline.StatusCompleted, true)
				// 4 KB of text that does not compress is more than an index
				// entry holds.
				bad.SourceMessageID = randomText(4 << 10)
				return []Message{msg("k8", pipeline.StatusCompleted, true), bad, msg("k9", pipeline.StatusFailedTerminal, false)}
			}(),
			want: []Disposition{Inserted, Refused, Inserted},
			check: func(t *testing.T, batch []Message, res []Result) {
				var status, stage, summary, srcID string
				if err := db.Pool.QueryRow(ctx, `select status, halted_stage, error_summary, source_message_id from ingestion_messages where dedupe_key = 'k7'`).
					Scan(&status, &stage, &summary, &srcID); err != nil {
					t.Fatal(err)
				}
				if status != string(pipeline.StatusFailedTerminal) || stage != "persist" || !strings.HasPrefix(summary, "could not be stored: index row") || strings.Contains(summary, "SQLSTATE") {
					t.Errorf("refused message stored as %s at %s: %q", status, stage, summary)
				}
				if res[1].Reason != summary {
					t.Errorf("result reason %q, stored %q", res[1].Reason, summary)
				}
				if len(srcID) > 256 || !strings.HasPrefix(srcID, batch[1].SourceMessageID[:100]) || !strings.HasSuffix(srcID, bound.Hash(batch[1].SourceMessageID)) {
					t.Errorf("source_message_id of %d bytes, want the id cut to 256 bytes with its hash", len(srcID))
				}
				if n := count(`select count(*) from device_telemetry_logs where ingestion_message_id = $1`, batch[1].ID); n != 0 {
					t.Errorf("refused message has %d telemetry rows", n)
				}
				if n := count(`select count(*) from ingestion_messages where dedupe_key in ('k8', 'k9')`); n != 2 {
					t.Errorf("%d of its neighbours stored, want 2", n)
				}
				if n := count(`select count(*) from device_telemetry_logs where id = $1`, batch[0].ID); n != 1 {
					t.Errorf("neighbour's telemetry row not stored")
				}
			},
		},
		{
			name: "a payload over the stored-payload limit keeps its first bytes, size and hash, and no JSON copy",
			batch: func() []Message {
				m := msg("k10", pipeline.StatusCompleted, true)
				m.RawPayload = []byte(`{"temp_c": 1, "pad": "` + strings.Repeat("y", 5000) + `"}`)
				return []Message{m}
			}(),
			want: []Disposition{Inserted},
			check: func(t *testing.T, batch []Message, res []Result) {
				raw := batch[0].RawPayload
				sum := sha256.Sum256(raw)
				note := fmt.Sprintf("payload of %d bytes exceeds the stored-payload limit 1024; first 1024 bytes kept, sha256 %x", len(raw), sum)
				if n := count(`select count(*) from ingestion_messages where id = $1 and raw_payload = $2 and raw_payload_bytes = $3
					and raw_payload_sha256 = $4 and error_summary = $5`, batch[0].ID, raw[:1024], len(raw), sum[:], note); n != 1 {
					t.Errorf("message row does not keep the first 1024 bytes, the size and the hash, saying %q", note)
				}
				if res[0].PayloadNote != note {
					t.Errorf("result note %q, want %q", res[0].PayloadNote, note)
				}
				if n := count(`select count(*) from device_telemetry_logs where id = $1 and raw_payload is null`, batch[0].ID); n != 1 {
					t.Errorf("telemetry row keeps a JSON copy")
				}
			},
		},
		{
			name: "a payload refused as a whole keeps no JSON copy in its telemetry row",
			batch: func() []Message {
				m := msg("k11", pipeline.StatusFailedValidation, true)
				m.Telemetry.State, m.Telemetry.Valid, m.Telemetry.PayloadRefused = pipeline.StateInvalid, false, true
				return []Message{m}
			}(),
			want: []Disposition{Inserted},
			check: func(t *testing.T, batch []Message, _ []Result) {
				if n := count(`select count(*) from device_telemetry_logs where id = $1 and raw_payload is null`, batch[0].ID); n != 1 {
					t.Errorf("telemetry row keeps a JSON copy")
				}
				if n := count(`select count(*) from ingestion_messages where id = $1 and raw_payload = $2 and raw_payload_bytes is null`, batch[0].ID, batch[0].RawPayload); n != 1 {
					t.Errorf("message row does not keep the payload whole")
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, _, err := store.Persist(ctx, tt.batch, tt.dry, logs, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, w := range tt.want {
				if res[i].Disposition != w {
					t.Errorf("message %d: disposition %v, want %v", i, res[i].Disposition, w)
				}
			}
			if tt.check != nil {
				tt.check(t, tt.batch, res)
			}
		})
	}
}

// TestPersistKeyStoredMeanwhile stores a key from another transaction after
// the persister looked it up and before its copy: the copy waits for that
// transaction, fails on the key, and the batch is written again with the
// message a duplicate of the other writer's row and its neighbour stored.
func TestPersistKeyStoredMeanwhile(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	store := NewStore(db.Pool, 30*time.Second)
	logs, _ := stagelog.New(stagelog.ModeAll, 1, "test")
	other, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Rollback(context.WithoutCancel(ctx)) }()
	otherID := uuid.Must(uuid.NewV7())
	if _, err := other.Exec(ctx, `insert into ingestion_messages (id, source_subject, dedupe_key, status, received_at)
		values ($1, 'devices.d.telemetry', 'raced', 'completed', now())`, otherID); err != nil {
		t.Fatal(err)
	}
	batch := []Message{
		{ID: uuid.Must(uuid.NewV7()), DedupeKey: "raced", SourceSubject: "devices.d.telemetry", Status: pipeline.StatusCompleted, ReceivedAt: time.Now()},
		{ID: uuid.Must(uuid.NewV7()), DedupeKey: "calm", SourceSubject: "devices.d.telemetry", Status: pipeline.StatusCompleted, ReceivedAt: time.Now(),
			DeviceID: uuid.New(), RawPayload: []byte(`{"temp_c": 1}`),
			Telemetry: &Telemetry{Topic: "telemetry", RecordedAt: time.Now(), State: pipeline.StatePending, Valid: true, Mutated: `{"temp_c":1}`, Transformed: `{"temp_c":1}`}},
	}
	type outcome struct {
		res []Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, _, err := store.Persist(ctx, batch, false, logs, nil)
		done <- outcome{res, err}
	}()
	// The copy waits for the other transaction's key.
	testutil.Eventually(t, 30*time.Second, "the persister's copy waits for the other writer", func() error {
		var waiting int
		if err := db.Pool.QueryRow(ctx, `select count(*) from pg_stat_activity
			where datname = current_database() and wait_event_type = 'Lock' and query ilike 'copy%ingestion_messages%'`).Scan(&waiting); err != nil {
			return err
		}
		if waiting == 0 {
			return errors.New("no copy waits")
		}
		return nil
	})
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var o outcome
	select {
	case o = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Persist did not return within 30s of the other writer's commit")
	}
	if o.err != nil {
		t.Fatalf("Persist: %v", o.err)
	}
	if o.res[0].Disposition != Duplicate || o.res[0].OriginalID != otherID {
		t.Errorf("raced key: %+v, want a duplicate of %s", o.res[0], otherID)
	}
	if o.res[1].Disposition != Inserted || o.res[1].OriginalID != batch[1].ID {
		t.Errorf("its neighbour: %+v, want inserted as %s", o.res[1], batch[1].ID)
	}
	// Written again as it was, not as a batch whose content was refused.
	var kept bool
	if err := db.Pool.QueryRow(ctx, `select raw_payload is not null from device_telemetry_logs where id = $1`, batch[1].ID).Scan(&kept); err != nil || !kept {
		t.Errorf("the neighbour's telemetry row lost its JSON payload (%v)", err)
	}
}
