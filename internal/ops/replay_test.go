package ops

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
)

func TestReplayPublishFailed(t *testing.T) {
	db := testdb.New(t)
	f := fixture{t, db.Pool}
	ctx := context.Background()
	acme, globex := f.org("acme"), f.org("globex")
	d1, d2, d3 := f.device(acme, "d1"), f.device(acme, "d2"), f.device(globex, "g1")
	now := time.Now().UTC()
	add := func(org, dev uuid.UUID, state string, received time.Time) uuid.UUID {
		id := f.message(msg{org: org, device: dev, status: "completed", received: received})
		f.telemetry(id, org, dev, state, received)
		f.exec(`update device_telemetry_logs set received_at = $2 where id = $1`, id, received)
		return id
	}
	add(acme, d1, "publish_failed", now.Add(-time.Hour))
	add(acme, d2, "publish_failed", now.Add(-2*time.Hour))
	add(acme, d1, "processed", now)
	add(globex, d3, "publish_failed", now.Add(-3*time.Hour))

	for _, tc := range []struct {
		name   string
		filter Filter
		want   int64
	}{
		{"everything", Filter{}, 3},
		{"organization", Filter{Organization: "acme"}, 2},
		{"device", Filter{Device: "d1"}, 1},
		{"since", Filter{Since: now.Add(-150 * time.Minute)}, 2},
		{"until", Filter{Until: now.Add(-150 * time.Minute)}, 1},
		{"nothing", Filter{Organization: "globex", Device: "d1"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := CountPublishFailed(ctx, db.Pool, tc.filter)
			if err != nil || n != tc.want {
				t.Fatalf("count %d, %v; want %d", n, err, tc.want)
			}
		})
	}
	for _, bad := range []Filter{{Organization: "nope"}, {Device: "nope"}} {
		if _, err := CountPublishFailed(ctx, db.Pool, bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("%+v: err %v, want ErrNotFound", bad, err)
		}
	}

	n, err := ReplayPublishFailed(ctx, db.Pool, Filter{Organization: "acme"})
	if err != nil || n != 2 {
		t.Fatalf("replayed %d, %v; want 2", n, err)
	}
	var due int
	if err := db.Pool.QueryRow(ctx, `select count(distinct m) from publish_outbox, unnest(message_ids) m
		where due_at <= now()`).Scan(&due); err != nil {
		t.Fatal(err)
	}
	if due != 2 {
		t.Errorf("%d rows due for the retry loop, want 2", due)
	}
}

func TestParkedAndRepark(t *testing.T) {
	db := testdb.New(t)
	f := fixture{t, db.Pool}
	ctx := context.Background()
	acme, globex := f.org("acme"), f.org("globex")
	f.exec(`insert into pipeline_switches (organization_id, pipeline_enabled) values ($1, false)`, globex)
	now := time.Now()
	f.message(msg{org: acme, status: "parked", received: now})
	f.message(msg{org: globex, status: "parked", received: now})
	f.message(msg{org: globex, status: "parked", received: now})
	stale := f.message(msg{org: acme, status: "queued", received: now.Add(-10 * time.Minute)})
	fresh := f.message(msg{org: acme, status: "queued", received: now})

	groups, err := Parked(ctx, db.Pool, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	want := []ParkedGroup{
		{OrganizationID: acme, Organization: "acme", Parked: 1, StaleQueued: 1, SwitchOn: true},
		{OrganizationID: globex, Organization: "globex", Parked: 2, StaleQueued: 0, SwitchOn: false},
	}
	if len(groups) != 2 || groups[0] != want[0] || groups[1] != want[1] {
		t.Fatalf("groups %+v, want %+v", groups, want)
	}

	n, err := Repark(ctx, db.Pool, Filter{Organization: "acme"})
	if err != nil || n != 1 {
		t.Fatalf("reparked %d, %v; want 1", n, err)
	}
	for id, status := range map[uuid.UUID]string{stale: "parked", fresh: "queued"} {
		var got string
		if err := db.Pool.QueryRow(ctx, `select status from ingestion_messages where id = $1`, id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != status {
			t.Errorf("%s: status %s, want %s", id, got, status)
		}
	}
}

func TestReplayDeadLetters(t *testing.T) {
	db := testdb.New(t)
	f := fixture{t, db.Pool}
	// Generous: a busy machine makes each step slow; none waits it out.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	acme := f.org("acme")
	ns := testnats.New(t)
	_, js := ns.Connect(t)
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TELEMETRY", Subjects: []string{"devices.>"}})
	if err != nil {
		t.Fatal(err)
	}

	dead := f.message(msg{org: acme, subject: "devices.d1.telemetry", status: "failed_terminal", halted: "ingress",
		summary: "dead-lettered after 5 deliveries: validator unavailable", payload: []byte(`{"t": 1}`)})
	rejected := f.message(msg{org: acme, subject: "devices.d2.telemetry", status: "failed_terminal", halted: "ingress",
		summary: "rejected by the chain: bad envelope", payload: []byte("not json")})
	// Not dead letters: an unknown topic, and a message halted by validation.
	f.message(msg{org: acme, status: "failed_terminal", halted: "ingress", summary: "unknown topic", payload: []byte("{}")})
	f.message(msg{org: acme, status: "failed_validation", halted: "validate", summary: "dead-lettered", payload: []byte("{}")})

	dls, err := DeadLetters(ctx, db.Pool, Filter{Organization: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 2 || dls[0].ID != dead || dls[1].ID != rejected {
		t.Fatalf("dead letters %+v, want %s and %s", dls, dead, rejected)
	}
	for _, d := range dls {
		if err := ReplayDeadLetter(ctx, db.Pool, js, d); err != nil {
			t.Fatal(err)
		}
	}

	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Both are stored: the fetch returns once it has them.
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for m := range batch.Messages() {
		got = append(got, m.Subject()+" "+m.Headers().Get(jetstream.MsgIDHeader)+" "+string(m.Data()))
	}
	wantMsgs := []string{
		"devices.d1.telemetry replay-" + dead.String() + ` {"t": 1}`,
		"devices.d2.telemetry replay-" + rejected.String() + " not json",
	}
	if strings.Join(got, "\n") != strings.Join(wantMsgs, "\n") {
		t.Errorf("published\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantMsgs, "\n"))
	}

	var summary string
	if err := db.Pool.QueryRow(ctx, `select error_summary from ingestion_messages where id = $1`, dead).Scan(&summary); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(summary, "dead-lettered after 5 deliveries: validator unavailable (replayed at ") {
		t.Errorf("error_summary %q", summary)
	}
	// A replayed dead letter is not offered again.
	if dls, err := DeadLetters(ctx, db.Pool, Filter{}); err != nil || len(dls) != 0 {
		t.Errorf("after the replay: %d dead letters, %v; want none", len(dls), err)
	}
}
