package ops

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/testdb"
)

func TestTraceMessage(t *testing.T) {
	db := testdb.New(t)
	f := fixture{t, db.Pool}
	ctx := context.Background()
	org := f.org("acme")
	dev := f.device(org, "d1")
	now := time.Now().UTC().Truncate(time.Millisecond)

	key := "id:devices.d1.telemetry:m-1"
	id := f.message(msg{org: org, device: dev, sourceID: "m-1", dedupe: key, status: "completed", received: now.Add(-time.Minute)})
	f.telemetry(id, org, dev, "processed", now.Add(-2*time.Minute))
	// The ingress entry of a redelivery carries another message id but the
	// same dedupe key; the validate entry only the message id.
	f.stageLog(uuid.New(), key, "ingress", "duplicate", now.Add(-30*time.Second))
	f.stageLog(id, key, "ingress", "completed", now.Add(-59*time.Second))
	f.stageLog(id, "", "validate", "completed", now.Add(-58*time.Second))
	// Someone else's entry.
	f.stageLog(uuid.New(), "id:devices.d2.telemetry:m-1", "ingress", "completed", now)

	halted := f.message(msg{org: org, device: dev, sourceID: "m-2", status: "failed_validation", halted: "validate",
		summary: "t: too hot", received: now})
	f.stageLog(halted, "", "validate", "halted", now)

	// m-3 was sent twice on two subjects; the newest is traced.
	older := f.message(msg{sourceID: "m-3", subject: "devices.d1.telemetry", status: "completed", received: now.Add(-time.Hour)})
	newer := f.message(msg{sourceID: "m-3", subject: "devices.d1.status", status: "completed", received: now})

	for _, tc := range []struct {
		name, ref  string
		want       uuid.UUID
		logs       []string
		telemetry  bool
		others     int
		wantStatus string
	}{
		{"by id", id.String(), id, []string{"ingress/completed", "validate/completed", "ingress/duplicate"}, true, 0, "completed"},
		{"by dedupe key", key, id, []string{"ingress/completed", "validate/completed", "ingress/duplicate"}, true, 0, "completed"},
		{"by device message id", "m-1", id, []string{"ingress/completed", "validate/completed", "ingress/duplicate"}, true, 0, "completed"},
		{"halted", halted.String(), halted, []string{"validate/halted"}, false, 0, "failed_validation"},
		{"newest of several", "m-3", newer, nil, false, 1, "completed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := TraceMessage(ctx, db.Pool, tc.ref)
			if err != nil {
				t.Fatal(err)
			}
			if tr.Message.ID != tc.want || tr.Message.Status != tc.wantStatus {
				t.Fatalf("traced %s (%s), want %s (%s)", tr.Message.ID, tr.Message.Status, tc.want, tc.wantStatus)
			}
			var got []string
			for _, l := range tr.StageLogs {
				got = append(got, l.Stage+"/"+l.Status)
			}
			if strings.Join(got, ",") != strings.Join(tc.logs, ",") {
				t.Errorf("stage logs %v, want %v", got, tc.logs)
			}
			if (tr.Telemetry != nil) != tc.telemetry {
				t.Fatalf("telemetry %+v, want present %v", tr.Telemetry, tc.telemetry)
			}
			if tr.Telemetry != nil && (tr.Telemetry.ProcessingState != "processed" || !strings.Contains(string(tr.Telemetry.UnresolvedValues), "missing input")) {
				t.Errorf("telemetry %+v", tr.Telemetry)
			}
			if len(tr.OtherMatches) != tc.others {
				t.Errorf("other matches %v, want %d", tr.OtherMatches, tc.others)
			}
			if tc.others == 1 && tr.OtherMatches[0] != older {
				t.Errorf("other match %s, want %s", tr.OtherMatches[0], older)
			}
		})
	}
	t.Run("halted reason", func(t *testing.T) {
		tr, err := TraceMessage(ctx, db.Pool, halted.String())
		if err != nil {
			t.Fatal(err)
		}
		if tr.Message.HaltedStage == nil || *tr.Message.HaltedStage != "validate" || tr.Message.Reason == nil ||
			string(tr.StageLogs[0].Errors) != `["t: too hot"]` {
			t.Errorf("got %+v %+v", tr.Message, tr.StageLogs)
		}
	})
	for _, ref := range []string{"nothing-like-it", uuid.NewString()} {
		t.Run("not found "+ref, func(t *testing.T) {
			_, err := TraceMessage(ctx, db.Pool, ref)
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("err %v, want ErrNotFound", err)
			}
		})
	}
}

// TestTraceQueriesUseIndexes checks that every query of a trace can be
// served by an index: with sequential scans disabled, a plan that still has
// one has no index to use, and would read millions of rows in production.
func TestTraceQueriesUseIndexes(t *testing.T) {
	db := testdb.New(t)
	ctx := context.Background()
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `set enable_seqscan = off`); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	for _, tc := range []struct {
		name, sql string
		args      []any
	}{
		{"message by id", queryMessageByID, []any{id}},
		{"message by dedupe key", queryMessageByDedupeKey, []any{"id:devices.d1.telemetry:m-1"}},
		{"message by device message id", queryMessageBySourceID, []any{"m-1"}},
		{"stage logs", queryStageLogs, []any{id, "id:devices.d1.telemetry:m-1"}},
		{"telemetry", queryTelemetry, []any{id}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := conn.Query(ctx, "explain "+tc.sql, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			var plan []string
			for rows.Next() {
				var line string
				if err := rows.Scan(&line); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, line)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			text := strings.Join(plan, "\n")
			t.Logf("plan:\n%s", text)
			if strings.Contains(text, "Seq Scan") || !strings.Contains(text, "Index") {
				t.Errorf("plan reads without an index:\n%s", text)
			}
		})
	}
}

// TestTraceOrdersStagesOfOneInstantByPipeline checks that stage rows written
// at the same instant (the deriver writes its mutate and derive rows
// together, a batch shares one timestamp) are listed in the order the
// pipeline runs them, not by stage name.
func TestTraceOrdersStagesOfOneInstantByPipeline(t *testing.T) {
	db := testdb.New(t)
	f := fixture{t, db.Pool}
	org := f.org("acme")
	dev := f.device(org, "d1")
	at := time.Now().UTC().Truncate(time.Millisecond)
	key := "id:devices.d1.telemetry:m-1"
	id := f.message(msg{org: org, device: dev, sourceID: "m-1", dedupe: key, status: "completed", received: at.Add(-time.Second)})
	// A row from a second earlier comes first whatever its stage.
	f.stageLog(id, key, "validate", "completed", at.Add(-time.Second))
	// Inserted in an order that is neither the pipeline's nor by name.
	for _, stage := range []string{"publish", "derive", "persist", "mutate", "validate", "ingress"} {
		f.stageLog(id, key, stage, "completed", at)
	}
	tr, err := TraceMessage(t.Context(), db.Pool, id.String())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range tr.StageLogs {
		got = append(got, l.Stage)
	}
	want := "validate ingress validate mutate derive persist publish"
	if strings.Join(got, " ") != want {
		t.Errorf("stages %s, want %s", strings.Join(got, " "), want)
	}
}
