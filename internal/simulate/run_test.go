package simulate

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/testnats"
)

// startNATS runs an in-process NATS server with JetStream for the test and
// returns a connection to it.
func startNATS(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(testnats.New(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// telemetryStream creates the stream the gateway would read, with
// JetStream's default two-minute duplicate window.
func telemetryStream(t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	st, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "TELEMETRY", Subjects: demo.Subjects})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newJS(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// storedMsgs reads every message the stream kept.
func storedMsgs(t *testing.T, st jetstream.Stream) []*jetstream.RawStreamMsg {
	t.Helper()
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatalf("get message %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

var mix = Faults{Invalid: 10, Inactive: 10, DuplicateIDs: 15, UnknownTopic: 5, MalformedJSON: 5, MissingInputs: 10}

func TestRunLandsEveryMessage(t *testing.T) {
	nc := startNATS(t)
	js := newJS(t, nc)
	st := telemetryStream(t, js)

	cfg := Config{Devices: DemoDevices(0), Count: 200, MessageIDs: true, Faults: mix, Seed: 42, RunID: "land"}
	var mu sync.Mutex
	var calls []Stats
	s, err := Run(t.Context(), js, cfg, func(s Stats) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, s)
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("sent %v skipped %v acked %d failed %d dropped %d header dups %d payload-only dups %d in %s",
		s.Sent, s.Skipped, s.Acked, s.Failed, s.DroppedDuplicates, s.HeaderDuplicates, s.PayloadOnlyDuplicates, s.Elapsed)

	byKind := 0
	for _, k := range Kinds() {
		byKind += s.Sent[k]
		if k != Valid && s.Sent[k] == 0 {
			t.Errorf("no %v message in 200 with a fault mix", k)
		}
	}
	if byKind != 200 || s.Total() != 200 {
		t.Fatalf("by-kind counts add up to %d (Total %d), want 200", byKind, s.Total())
	}
	if s.Acked != 200 || s.Failed != 0 || s.Pending() != 0 {
		t.Fatalf("acked %d failed %d pending %d, want 200 acked (last error %q)", s.Acked, s.Failed, s.Pending(), s.LastError)
	}
	if s.HeaderDuplicates+s.PayloadOnlyDuplicates != s.Sent[Duplicate] || s.HeaderDuplicates == 0 || s.PayloadOnlyDuplicates == 0 {
		t.Fatalf("duplicates %d split %d header + %d payload-only; want both kinds", s.Sent[Duplicate], s.HeaderDuplicates, s.PayloadOnlyDuplicates)
	}
	// Every original is seconds old at most: inside the two-minute window.
	if s.DroppedDuplicates != s.HeaderDuplicates {
		t.Errorf("JetStream dropped %d duplicates, want the %d header duplicates", s.DroppedDuplicates, s.HeaderDuplicates)
	}
	if s.Interrupted {
		t.Error("Interrupted after reaching Count")
	}
	if len(calls) == 0 || calls[len(calls)-1] != s {
		t.Errorf("after %d progress calls, the last is not the returned Stats %+v", len(calls), s)
	}

	msgs := storedMsgs(t, st)
	if len(msgs) != 200-s.DroppedDuplicates || len(msgs) != s.Stored() {
		t.Fatalf("stream holds %d messages, want 200 - %d dropped duplicates", len(msgs), s.DroppedDuplicates)
	}

	// Classify what landed and compare it with what Run says it sent.
	kindOf := map[string]string{}
	inactive := map[string]bool{}
	for _, d := range cfg.Devices {
		kindOf[d.Subject] = d.Kind
		inactive[d.Subject] = !d.Active
	}
	var got Counts
	idSeen := map[string]int{}
	for _, m := range msgs {
		header := m.Header.Get(jetstream.MsgIDHeader)
		if header == "" {
			// Only payload-only duplicates travel without the header.
			got[Duplicate]++
		}
		switch {
		case strings.HasSuffix(m.Subject, ".nosuchtopic"):
			got[UnknownTopic]++
			continue
		case !json.Valid(m.Data):
			got[MalformedJSON]++
			continue
		}
		p := mustObject(t, m.Data)
		id, _ := p["message_id"].(string)
		if header != "" && id != header {
			t.Errorf("%s: header id %q, payload message_id %q", m.Subject, header, id)
		}
		idSeen[id]++
		if inactive[m.Subject] {
			got[Inactive]++
			continue
		}
		if header == "" {
			continue
		}
		failed, critical, absent := check(t, kindOf[m.Subject], p)
		switch {
		case len(critical) > 0:
			got[Invalid]++
		case len(failed) > 0:
			t.Errorf("%s fails %v without a critical failure", m.Data, failed)
		case len(absent) > 0:
			got[MissingInputs]++
		default:
			got[Valid]++
		}
	}
	repeats := 0
	for _, n := range idSeen {
		repeats += n - 1
	}
	if repeats != s.PayloadOnlyDuplicates {
		t.Errorf("%d payload ids stored twice, want the %d payload-only duplicates", repeats, s.PayloadOnlyDuplicates)
	}
	want := s.Sent
	want[Duplicate] = s.PayloadOnlyDuplicates
	if got != want {
		t.Errorf("stream holds by kind %v, want %v", got, want)
	}
}

func TestRunWithoutMessageIDs(t *testing.T) {
	nc := startNATS(t)
	js := newJS(t, nc)
	st := telemetryStream(t, js)

	s, err := Run(t.Context(), js, Config{Devices: DemoDevices(0), Count: 100, Faults: Faults{DuplicateIDs: 30, MalformedJSON: 10}, Seed: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Sent[Duplicate] == 0 || s.HeaderDuplicates != 0 || s.PayloadOnlyDuplicates != 0 || s.DroppedDuplicates != 0 {
		t.Fatalf("duplicates %d (header %d, payload-only %d, dropped %d); want identical re-sends, none dropped",
			s.Sent[Duplicate], s.HeaderDuplicates, s.PayloadOnlyDuplicates, s.DroppedDuplicates)
	}
	msgs := storedMsgs(t, st)
	if len(msgs) != 100 {
		t.Fatalf("stream holds %d messages, want 100", len(msgs))
	}
	for _, m := range msgs {
		if len(m.Header) != 0 || strings.Contains(string(m.Data), "message_id") {
			t.Fatalf("message with ids off carries header %v, body %s", m.Header, m.Data)
		}
	}
}

func TestRunPacesToRate(t *testing.T) {
	nc := startNATS(t)
	js := newJS(t, nc)
	telemetryStream(t, js)

	start := time.Now()
	s, err := Run(t.Context(), js, Config{Devices: DemoDevices(0), Rate: 100, Count: 40, MessageIDs: true, Seed: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 40 at 100/s, less a burst of two, is at least 380ms. A busy machine
	// only makes it slower; the upper bound catches a run that waits far
	// more than it should, not one that was kept off the CPU.
	if took := time.Since(start); took < 350*time.Millisecond || took > time.Minute {
		t.Errorf("40 messages at 100/s took %s", took)
	}
	if s.Total() != 40 || s.Acked != 40 {
		t.Errorf("sent %d acked %d, want 40", s.Total(), s.Acked)
	}
}

func TestRunStopsAfterDuration(t *testing.T) {
	nc := startNATS(t)
	js := newJS(t, nc)
	telemetryStream(t, js)

	s, err := Run(t.Context(), js, Config{Devices: DemoDevices(0), Rate: 200, Duration: 300 * time.Millisecond, Seed: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// At most 60 and a burst; a busy machine may send far fewer, but the
	// run must send and stop.
	if s.Total() < 1 || s.Total() > 90 {
		t.Errorf("300ms at 200/s sent %d", s.Total())
	}
	if s.Interrupted || s.Failed != 0 || s.Acked != s.Total() {
		t.Errorf("interrupted %v, acked %d, failed %d of %d", s.Interrupted, s.Acked, s.Failed, s.Total())
	}
}

func TestRunStopsWhenContextEnds(t *testing.T) {
	nc := startNATS(t)
	js := newJS(t, nc)
	st := telemetryStream(t, js)

	// The context ends once JetStream has confirmed something, however
	// long a busy machine takes to get there.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	endOnAck := func(s Stats) {
		if s.Acked > 0 {
			cancel()
		}
	}
	s, err := Run(ctx, js, Config{Devices: DemoDevices(0), MessageIDs: true, Faults: mix, Seed: 1}, endOnAck)
	if err != nil {
		t.Fatalf("Run after the context ended: %v", err)
	}
	if !s.Interrupted || s.Total() == 0 {
		t.Fatalf("interrupted %v after %d messages", s.Interrupted, s.Total())
	}
	if s.Pending() != 0 || s.Failed != 0 {
		t.Fatalf("acked %d failed %d of %d: acks in flight at the stop were not all collected", s.Acked, s.Failed, s.Total())
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if int(info.State.Msgs) != s.Stored() {
		t.Errorf("stream holds %d, Stats say %d stored", info.State.Msgs, s.Stored())
	}
}

func TestRunFailsWithoutStream(t *testing.T) {
	nc := startNATS(t)
	_, err := Run(t.Context(), newJS(t, nc), Config{Devices: DemoDevices(0), Count: 1}, nil)
	if !errors.Is(err, jetstream.ErrStreamNotFound) || !strings.Contains(err.Error(), "no JetStream stream captures devices.thermo-01.telemetry") {
		t.Fatalf("Run without a stream = %v", err)
	}
}

func TestRunFailsWhenConnectionCloses(t *testing.T) {
	nc := startNATS(t)
	js := newJS(t, nc)
	telemetryStream(t, js)

	// The connection closes once JetStream has confirmed something,
	// however long a busy machine takes to get there. The run would last
	// far longer than giving up takes even on a busy machine.
	const giveUp = time.Minute
	var closeOnce sync.Once
	var closed time.Time
	closeOnAck := func(s Stats) {
		if s.Acked > 0 {
			closeOnce.Do(func() {
				closed = time.Now()
				go nc.Close()
			})
		}
	}
	s, err := Run(t.Context(), js, Config{Devices: DemoDevices(0), Rate: 500, Seed: 1, Duration: 5 * giveUp}, closeOnAck)
	if !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("Run = %v, want a closed connection", err)
	}
	if took := time.Since(closed); took > giveUp {
		t.Errorf("Run took %s to give up on a closed connection", took)
	}
	if s.Pending() != 0 || s.Acked == 0 || s.Failed == 0 {
		t.Errorf("acked %d failed %d pending %d", s.Acked, s.Failed, s.Pending())
	}
}

func TestRunRejectsUnboundedRuns(t *testing.T) {
	_, err := Run(context.Background(), nil, Config{Devices: DemoDevices(0)}, nil)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "nothing ends the run") {
		t.Fatalf("Run with no bound = %v", err)
	}
	_, err = Run(context.Background(), nil, Config{Devices: DemoDevices(0), Count: 1, Faults: Faults{Invalid: 200}}, nil)
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("Run with a bad share = %v", err)
	}
}
