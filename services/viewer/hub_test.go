package viewer

import (
	"errors"
	"fmt"
	"testing"
)

func TestBadge(t *testing.T) {
	for _, tc := range []struct {
		percent float64
		want    string
	}{
		{0, BadgeStable},
		{9.99, BadgeStable},
		{10, BadgeWatch},
		{24.9, BadgeWatch},
		{25, BadgeHighRisk},
		{100, BadgeHighRisk},
	} {
		if got := Badge(tc.percent); got != tc.want {
			t.Errorf("Badge(%v) = %q, want %q", tc.percent, got, tc.want)
		}
	}
}

// telemetryEvent is a telemetry event of a device for the hub tests.
func telemetryEvent(org, device string, n int) *event {
	return &event{kind: kindTelemetry, org: org, device: "uuid-" + device, deviceExt: device, topic: "telemetry",
		data: fmt.Appendf(nil, `{"n":%d}`, n)}
}

func TestHubReplay(t *testing.T) {
	h := newHub("ep", 10, 100, 10, 10, newMetrics(nil))
	for i := 1; i <= 25; i++ {
		dev := "a"
		if i%2 == 0 {
			dev = "b"
		}
		h.publish(telemetryEvent("acme", dev, i))
	}
	seqs := func(evs []*event) []uint64 {
		var out []uint64
		for _, e := range evs {
			out = append(out, e.seq)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		f       filter
		lastID  string
		want    string
		wantGap bool
	}{
		// The ring holds the last 10 (16..25); a fresh page gets the last 3
		// that match.
		{name: "fresh", lastID: "", want: "[23 24 25]"},
		{name: "fresh filtered by external id", f: filter{device: "a"}, want: "[21 23 25]"},
		{name: "fresh filtered by uuid", f: filter{device: "uuid-b"}, want: "[20 22 24]"},
		{name: "other organization", f: filter{org: "globex"}, want: "[]"},
		{name: "resume", lastID: "ep-21", want: "[22 23 24 25]"},
		{name: "resume, nothing missed", lastID: "ep-25", want: "[]"},
		{name: "resume at the ring's edge", lastID: "ep-15", want: "[16 17 18 19 20 21 22 23 24 25]"},
		{name: "resume past the ring", lastID: "ep-3", want: "[16 17 18 19 20 21 22 23 24 25]", wantGap: true},
		{name: "another replica's id", lastID: "other-21", want: "[23 24 25]"},
		{name: "not an id", lastID: "garbage", want: "[23 24 25]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, first, gap, err := h.subscribe("page", tc.f, false, tc.lastID, 3)
			if err != nil {
				t.Fatal(err)
			}
			defer h.unsubscribe(c)
			if got := fmt.Sprint(seqs(first)); got != tc.want || gap != tc.wantGap {
				t.Errorf("replay %s gap %v, want %s gap %v", got, gap, tc.want, tc.wantGap)
			}
		})
	}
}

func TestHubBoundsSlowPages(t *testing.T) {
	m := newMetrics(nil)
	h := newHub("ep", 5, 2, 2, 2, m)
	slow, _, _, err := h.subscribe("a", filter{}, false, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	other, _, _, err := h.subscribe("b", filter{device: "b"}, false, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := h.subscribe("c", filter{}, false, "", 0); !errors.Is(err, ErrTooManyClients) {
		t.Fatalf("third page: %v, want ErrTooManyClients", err)
	}
	for i := 1; i <= 7; i++ {
		h.publish(telemetryEvent("acme", "a", i))
	}
	// A full buffer neither blocks the publisher nor grows: the page keeps
	// the first two and is told how many it lost.
	if len(slow.ch) != 2 || cap(slow.ch) != 2 || slow.dropped.Load() != 5 {
		t.Errorf("slow page holds %d of %d, dropped %d; want 2 of 2, dropped 5", len(slow.ch), cap(slow.ch), slow.dropped.Load())
	}
	if len(other.ch) != 0 || other.dropped.Load() != 0 {
		t.Errorf("filtered page got %d, dropped %d; want nothing", len(other.ch), other.dropped.Load())
	}
	// Health events are never counted as dropped: a newer one follows.
	h.publish(&event{kind: kindHealth, data: []byte(`{}`)})
	if slow.dropped.Load() != 5 {
		t.Errorf("dropped %d after a health event, want 5", slow.dropped.Load())
	}
	if h.count != 5 {
		t.Errorf("the ring holds %d events, want its size 5", h.count)
	}
	h.unsubscribe(slow)
	h.unsubscribe(slow) // twice is harmless
	if n := h.clientCount(); n != 1 {
		t.Errorf("%d pages after one left, want 1", n)
	}
}

func TestHubRawDemand(t *testing.T) {
	h := newHub("ep", 5, 10, 10, 10, newMetrics(nil))
	calls := 0
	h.onRawDemand = func() { calls++ }
	a, _, _, _ := h.subscribe("k", filter{}, true, "", 0)
	b, _, _, _ := h.subscribe("k", filter{}, true, "", 0)
	plain, _, _, _ := h.subscribe("k", filter{}, false, "", 0)
	if calls != 1 || h.rawDemand() != 2 {
		t.Fatalf("after two raw pages: %d calls, demand %d; want 1 call, demand 2", calls, h.rawDemand())
	}
	h.publish(&event{kind: kindRaw, data: []byte(`{}`)})
	if len(a.ch) != 1 || len(b.ch) != 1 || len(plain.ch) != 0 {
		t.Errorf("raw event reached %d, %d and %d pages; want 1, 1 and 0", len(a.ch), len(b.ch), len(plain.ch))
	}
	if h.count != 0 {
		t.Errorf("a raw event was kept for replay")
	}
	h.unsubscribe(a)
	h.unsubscribe(plain)
	h.unsubscribe(b)
	if calls != 2 || h.rawDemand() != 0 {
		t.Errorf("after they left: %d calls, demand %d; want 2 calls, demand 0", calls, h.rawDemand())
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for name, tune := range map[string]func(*Config){
		"no listen":       func(c *Config) { c.Listen = "" },
		"no stream":       func(c *Config) { c.Stream = "" },
		"zero raw rate":   func(c *Config) { c.RawRate = 0 },
		"history":         func(c *Config) { c.HistoryMinutes = 0 },
		"no clients":      func(c *Config) { c.MaxClients = 0 },
		"no buffer":       func(c *Config) { c.ClientBuffer = 0 },
		"no heartbeat":    func(c *Config) { c.Heartbeat = 0 },
		"no write budget": func(c *Config) { c.WriteTimeout = 0 },
	} {
		c := DefaultConfig()
		tune(&c)
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
	if _, err := New(DefaultConfig(), Deps{}, nil); !errors.Is(err, ErrConfig) {
		t.Errorf("New without deps: %v, want ErrConfig", err)
	}
}

func TestHubShareOfOneClient(t *testing.T) {
	h := newHub("ep", 5, 2, 4, 2, newMetrics(nil))
	sub := func(key string) (*client, error) {
		c, _, _, err := h.subscribe(key, filter{}, false, "", 0)
		return c, err
	}
	a1, err1 := sub("a")
	_, err2 := sub("a")
	if err1 != nil || err2 != nil {
		t.Fatalf("a's share: %v, %v", err1, err2)
	}
	if _, err := sub("a"); !errors.Is(err, ErrTooManyFromClient) {
		t.Fatalf("a over its share: %v, want ErrTooManyFromClient", err)
	}
	// Others still get in up to the total, and then even a is told it is
	// over its own share rather than that the viewer is full.
	if _, err := sub("b"); err != nil {
		t.Fatal(err)
	}
	if _, err := sub("c"); err != nil {
		t.Fatal(err)
	}
	if _, err := sub("d"); !errors.Is(err, ErrTooManyClients) {
		t.Fatalf("fifth page: %v, want ErrTooManyClients", err)
	}
	if _, err := sub("a"); !errors.Is(err, ErrTooManyFromClient) {
		t.Fatalf("a while full: %v, want ErrTooManyFromClient", err)
	}
	// A page that leaves gives its slot back to its client.
	h.unsubscribe(a1)
	h.unsubscribe(a1)
	if _, err := sub("a"); err != nil {
		t.Fatalf("a after one of its pages left: %v", err)
	}
	if _, err := sub("a"); !errors.Is(err, ErrTooManyFromClient) {
		t.Fatalf("a over its share again: %v", err)
	}
}
