package publisher

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/testnats"
)

// A store remembers what it wrote and skips reading the entry next time,
// yet never loses what another replica wrote meanwhile, and writes into a
// bucket made again after the one it remembers was deleted.
func TestStateStoreRemembersWithoutLosingOtherWriters(t *testing.T) {
	ns := testnats.New(t)
	_, js := ns.Connect(t)
	ctx := t.Context()
	cfg := DefaultNATSConfig()
	kv, err := Setup(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := NewStateStore(js, kv, cfg.AnalyticsStream, 10*time.Second)
	b := NewStateStore(js, kv, cfg.AnalyticsStream, 10*time.Second)
	const device = "0190a0b0-0000-7000-8000-000000000002"
	at := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	update := func(topic, id string, sec int) DeviceUpdate {
		return DeviceUpdate{Device: device, Organization: "acme", Topics: map[string]TopicState{
			topic: {Values: json.RawMessage(`{"v":1}`), MessageID: id, RecordedAt: at.Add(time.Duration(sec) * time.Second)}}}
	}
	entry := func() DeviceState {
		t.Helper()
		e, err := kv.Get(ctx, device)
		if err != nil {
			t.Fatal(err)
		}
		st, err := decodeState(e.Value())
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	write := func(s *StateStore, u DeviceUpdate, want bool) {
		t.Helper()
		wrote, err := s.Write(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if wrote != want {
			t.Fatalf("wrote %v, want %v", wrote, want)
		}
	}

	write(a, update("telemetry", "m1", 1), true)
	if _, _, ok := a.remembered(device); !ok {
		t.Fatal("the store does not remember the entry it wrote")
	}
	// Another replica writes a newer message of another topic: a's
	// remembered revision is stale, its write must read again and keep
	// both topics.
	write(b, update("status", "s1", 2), true)
	write(a, update("telemetry", "m2", 3), true)
	st := entry()
	if st.Topics["telemetry"].MessageID != "m2" || st.Topics["status"].MessageID != "s1" {
		t.Fatalf("entry %+v, want telemetry m2 and status s1", st.Topics)
	}
	// An older message changes nothing, from memory or not.
	write(a, update("telemetry", "m0", 0), false)
	if got := entry().Topics["telemetry"].MessageID; got != "m2" {
		t.Fatalf("telemetry %s after an older message, want m2", got)
	}

	// The bucket deleted and made again: the remembered revision is
	// refused and the entry is created anew.
	if err := js.DeleteKeyValue(ctx, cfg.Bucket); err != nil {
		t.Fatal(err)
	}
	kv2, err := Setup(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	kv = kv2
	write(a, update("telemetry", "m3", 4), true)
	if got := entry().Topics["telemetry"].MessageID; got != "m3" {
		t.Fatalf("telemetry %s in the new bucket, want m3", got)
	}
}
