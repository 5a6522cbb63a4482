package persister

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testutil"
)

// heldPublisher is a publisher whose every call waits until released, then
// fails as unreachable.
type heldPublisher struct {
	calls   chan []string
	release chan struct{}
}

func (p *heldPublisher) Publish(ctx context.Context, req *publisherv1.PublishRequest, _ ...grpc.CallOption) (*publisherv1.PublishResponse, error) {
	p.calls <- req.GetOutboxIds()
	select {
	case <-p.release:
	case <-ctx.Done():
	}
	return nil, status.Error(codes.Unavailable, "publisher went away")
}

// TestPublishLeaseIsRenewedWhileThePublishIsUnderWay: the outbox entry of a
// batch whose publish takes many leases stays out of the retry loop's reach
// for as long as the call lasts, and once the call has failed it is due at
// the retry delay, not a lease later.
func TestPublishLeaseIsRenewedWhileThePublishIsUnderWay(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	const lease = 1500 * time.Millisecond
	cfg := DefaultConfig()
	cfg.PublishTimeout, cfg.PublishLease, cfg.RetryDelay = time.Minute, lease, time.Hour
	logs, err := stagelog.New(stagelog.ModeAll, 1, "test")
	if err != nil {
		t.Fatal(err)
	}
	pub := &heldPublisher{calls: make(chan []string, 1), release: make(chan struct{})}
	srv := New(cfg, NewStore(db.Pool, lease), logs, pub, slog.New(slog.DiscardHandler))

	now := time.Now()
	id := uuid.Must(uuid.NewV7())
	env := &telemetryv1.Envelope{
		MessageId: id.String(), DedupeKey: "lease:" + id.String(), SourceSubject: "devices.d.telemetry",
		DeviceUuid: uuid.NewString(), Topic: "telemetry", Status: telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED,
		Payload: []byte(`{"temp_c": 1}`), Values: `{"temp_c":1}`, Transformed: `{"temp_c":1}`,
		ReceivedAt: timestamppb.New(now), RecordedAt: timestamppb.New(now), DeliveryAttempt: 1,
	}
	done := make(chan error, 1)
	go func() {
		_, err := srv.Persist(ctx, &persisterv1.PersistRequest{Envelopes: []*telemetryv1.Envelope{env}, WireVersion: envelope.WireVersion})
		done <- err
	}()
	var entries []string
	select {
	case entries = <-pub.calls:
	case <-time.After(30 * time.Second):
		t.Fatal("the publisher was never called")
	}
	if len(entries) != 1 {
		t.Fatalf("the publish named %d outbox entries, want 1", len(entries))
	}
	// The lease the commit set runs out after one lease; renewed, the
	// entry is due ever later and never due while the call lasts.
	started := time.Now()
	testutil.Eventually(t, 30*time.Second, "the lease renewed past three leases while the publish is under way", func() error {
		var renewed, due bool
		if err := db.Pool.QueryRow(ctx, `select due_at > $2::timestamptz + 3 * $3::interval, due_at <= now()
			from publish_outbox where id = $1`, entries[0], started, lease).Scan(&renewed, &due); err != nil {
			return err
		}
		if due {
			t.Fatalf("the entry became due while its publish was under way")
		}
		if !renewed {
			return fmt.Errorf("not renewed past %s yet", started.Add(3*lease).Format(time.RFC3339Nano))
		}
		return nil
	})

	close(pub.release)
	if err := <-done; err != nil {
		t.Fatalf("persist: %v", err)
	}
	// Renewal stopped with the call: the entry is due at the retry delay
	// (an hour here), where the failed publish put it, and stays there.
	var later bool
	if err := db.Pool.QueryRow(ctx, `select due_at > now() + interval '30 minutes' from publish_outbox where id = $1`, entries[0]).Scan(&later); err != nil {
		t.Fatal(err)
	}
	if !later {
		t.Error("the entry is not due at the retry delay after the publish failed")
	}
}
