package publisher

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/outbox"
)

// TestRowsOfAnOwnerThatStoppedAreTakenOverAfterItsLease: the persister
// commits rows with an outbox entry due one lease later and renews it while
// its publish is under way. A persister that died renews nothing: the retry
// loop leaves the rows alone while the lease runs, even renewed, and takes
// them over and publishes them once it has run out.
func TestRowsOfAnOwnerThatStoppedAreTakenOverAfterItsLease(t *testing.T) {
	s := newStage(t)
	ctx := t.Context()
	const lease = 2 * time.Second
	recorded := time.Now()
	id := uuid.Must(uuid.NewV7())
	s.exec(`insert into ingestion_messages (id, organization_id, device_id, source_subject, dedupe_key, status, received_at)
		values ($1, $2, $3, 'devices.x.telemetry', $4, 'completed', $5)`, id, s.org, s.devices[0], "seq:t@1:"+id.String(), recorded)
	s.exec(`insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
			ingestion_message_id, transformed_values, validation_status, processing_state)
		values ($1, $2, $2, $3, $4, 'telemetry', $1, '{"t": 21.5}', 'valid', 'pending')`, id, recorded, s.org, s.devices[0])
	entry, err := outbox.Add(ctx, s.db.Pool, []outbox.Row{{ID: id, RecordedAt: recorded}}, time.Now().Add(lease), 0)
	if err != nil {
		t.Fatal(err)
	}
	// The owner is alive: its renewal keeps the rows out of the loop.
	if err := outbox.Renew(ctx, s.db.Pool, []uuid.UUID{entry}, lease); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if n, err := s.srv.RetryOnce(ctx); err != nil || n != 0 {
		t.Fatalf("a retry round within the lease took %d rows (%v), want none", n, err)
	}
	if got := s.count(`select count(*) from device_telemetry_logs where id = $1 and processing_state = 'pending'`, id); got != 1 {
		t.Fatalf("the row is no longer pending within its lease")
	}
	// The owner stops renewing; within a lease or so the loop takes over.
	start := time.Now()
	s.rounds("the row published by the retry loop", func() bool {
		return s.count(`select count(*) from device_telemetry_logs where id = $1 and processing_state = 'processed'`, id) == 1
	})
	if took := time.Since(start); took > 10*lease {
		t.Errorf("taken over after %s, want about one lease (%s)", took, lease)
	}
	if n := s.count(`select count(*) from publish_outbox where id = $1`, entry); n != 0 {
		t.Errorf("the entry is still in the outbox after its rows were published")
	}
}
