package ops

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/testdb"
)

func TestReplayPublishFailedRows(t *testing.T) {
	db := testdb.New(t)
	f := fixture{t, db.Pool}
	ctx := context.Background()
	acme := f.org("acme")
	d1 := f.device(acme, "d1")
	now := time.Now().UTC()
	add := func(state string) uuid.UUID {
		id := f.message(msg{org: acme, device: d1, status: "completed", received: now})
		f.telemetry(id, acme, d1, state, now)
		return id
	}
	failed, other, processed := add("publish_failed"), add("publish_failed"), add("processed")

	n, err := ReplayPublishFailedRows(ctx, db.Pool, []uuid.UUID{failed, processed, uuid.New()})
	if err != nil || n != 1 {
		t.Fatalf("replayed %d, %v; want 1 (the processed row and an unknown id are left alone)", n, err)
	}
	due := func(id uuid.UUID) bool {
		t.Helper()
		var ok bool
		if err := db.Pool.QueryRow(ctx, `select exists (select 1 from publish_outbox where $1 = any(message_ids) and due_at <= now())`, id).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !due(failed) || due(other) || due(processed) {
		t.Errorf("due: replayed %v, other %v, processed %v; want true, false, false", due(failed), due(other), due(processed))
	}
	if n, err := ReplayPublishFailedRows(ctx, db.Pool, nil); err != nil || n != 0 {
		t.Errorf("no ids: %d, %v", n, err)
	}
}
