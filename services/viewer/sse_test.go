package viewer

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testutil"
)

// publishAnalytics publishes an event as the publisher does.
func publishAnalytics(t *testing.T, nc *nats.Conn, subject string, ev map[string]any) {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subject, b); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// waitSubscribed waits until the viewer follows the analytics subjects.
func waitSubscribed(t *testing.T, e *env, subject string) {
	t.Helper()
	testutil.Eventually(t, testWait, "viewer subscribed to "+subject, func() error {
		return holds(interested(e, subject), "no interest")
	})
}

// interested reports whether some client of the server listens on subject.
func interested(e *env, subject string) bool {
	return e.ns.Server.GlobalAccount().SubscriptionInterest(subject)
}

func TestLiveEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.Env = "local" })
	acme := e.org("acme")
	d1, d2 := e.device(acme, "d1"), e.device(acme, "d2")
	e.exec(`insert into derived_parameter_definitions (device_type_topic_id, key, data_type, expression, dependencies)
		select tt.id, 't_f', 'decimal', '{"*": [{"var": "t"}, 1.8]}', '{t}'
		from device_type_topics tt join device_types dt on dt.id = tt.device_type_id where dt.organization_id = $1`, acme)
	if err := e.srv.catalog.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	analytics := func(dev uuid.UUID) string {
		return "iot.v1.analytics.local.acme." + dev.String() + ".telemetry"
	}
	waitSubscribed(t, e, analytics(d1))

	all := e.openSSE("", nil)
	onlyD1 := e.openSSE("?device=d1", nil)
	if _, ok := all.next(testWait, "hello"); !ok {
		t.Fatal("no hello")
	}
	publishAnalytics(t, e.nc, analytics(d2), map[string]any{"message_id": "m-d2", "organization": "acme", "device_uuid": d2.String(),
		"device_external_id": "d2", "topic": "telemetry", "values": map[string]any{"t": 1}})
	publishAnalytics(t, e.nc, analytics(d1), map[string]any{"message_id": "m-d1", "organization": "acme", "device_uuid": d1.String(),
		"topic": "telemetry", "values": map[string]any{"t": 20, "t_f": 36}, "unresolved": map[string]any{"x": map[string]any{"reason": "missing_input"}}})
	publishAnalytics(t, e.nc, "iot.v1.invalid.local.acme.required", map[string]any{"message_id": "m-bad", "organization": "acme",
		"device_uuid": d1.String(), "device_external_id": "d1", "topic": "telemetry", "errors": []map[string]any{{"parameter": "t", "code": "required"}}})
	// Another environment's events are not followed.
	publishAnalytics(t, e.nc, "iot.v1.analytics.prod.acme."+d1.String()+".telemetry", map[string]any{"message_id": "m-prod"})

	var got []liveEvent
	for len(got) < 3 {
		ev, ok := all.next(testWait, kindTelemetry, kindInvalid)
		if !ok {
			t.Fatalf("after %d events, no more within %s", len(got), testWait)
		}
		var le liveEvent
		if err := json.Unmarshal([]byte(ev.data), &le); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(ev.id, e.srv.hub.epoch+"-") {
			t.Errorf("event id %q", ev.id)
		}
		got = append(got, le)
	}
	if got[0].MessageID != "m-d2" || got[1].MessageID != "m-d1" || got[2].Kind != kindInvalid || got[2].Reason != "required" {
		t.Fatalf("events %+v", got)
	}
	// The viewer names the device from the catalog and marks derived values.
	if got[1].Device != "d1" || strings.Join(got[1].Derived, ",") != "t_f" || got[1].Unresolved["x"] == nil {
		t.Errorf("d1's event %+v", got[1])
	}
	if ev, ok := all.next(300*time.Millisecond, kindTelemetry, kindInvalid); ok {
		t.Errorf("an event of another environment came through: %s", ev.data)
	}
	// The filtered page sees d1's two only.
	for _, want := range []string{"m-d1", "m-bad"} {
		ev, ok := onlyD1.next(testWait, kindTelemetry, kindInvalid)
		if !ok || !strings.Contains(ev.data, want) {
			t.Fatalf("filtered page: %v %s, want %s", ok, ev.data, want)
		}
	}

	// A page that reconnects with the last id it saw gets what came after.
	first := e.openSSE("", http.Header{"Last-Event-Id": {e.srv.hub.epoch + "-1"}})
	for _, want := range []string{"m-d1", "m-bad"} {
		ev, ok := first.next(testWait, kindTelemetry, kindInvalid)
		if !ok || !strings.Contains(ev.data, want) {
			t.Fatalf("resumed page: %v %s, want %s", ok, ev.data, want)
		}
	}
	// A fresh page gets the recent ones, and the health panel.
	fresh := e.openSSE("?org=acme", nil)
	if ev, ok := fresh.next(testWait, kindTelemetry); !ok || !strings.Contains(ev.data, "m-d2") {
		t.Errorf("fresh page's first event: %v %s", ok, ev.data)
	}
	if _, ok := fresh.next(testWait, kindHealth); !ok {
		t.Error("no health event on the live connection")
	}
}

func TestLiveConnectionOutlivesServerTimeouts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) {
		c.ReadTimeout = 300 * time.Millisecond
		c.WriteTimeout = 300 * time.Millisecond
		c.Heartbeat = 100 * time.Millisecond
	})
	s := e.openSSE("", nil)
	// Pings for five times the server's timeouts: a connection the
	// timeouts cut would end (next returns at once on a closed stream),
	// while a slow machine only makes the pings come late.
	start := time.Now()
	pings := 0
	for time.Since(start) < 1500*time.Millisecond || pings < 5 {
		if _, ok := s.next(testWait, "ping"); !ok {
			t.Fatalf("the live connection went quiet after %s and %d pings", time.Since(start), pings)
		}
		pings++
	}
	// Ordinary requests still work and are still bounded.
	if got := e.do(http.MethodGet, "/api/meta", "", nil, nil); got != http.StatusOK {
		t.Errorf("meta: %d", got)
	}
}

func TestSlowPageIsToldWhatItMissed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.ClientBuffer = 8 })
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.url+"/api/events", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	testutil.Eventually(t, testWait, "page connected", func() error {
		n := e.srv.hub.clientCount()
		return holds(n == 1, "%d pages", n)
	})
	// The page reads nothing while far more arrives than the socket
	// buffers hold; the viewer keeps at most ClientBuffer for it.
	big := strings.Repeat("x", 8192)
	for i := 0; i < 3000; i++ {
		e.srv.hub.publish(&event{kind: kindTelemetry, org: "acme", data: fmt.Appendf(nil, `{"n":%d,"pad":%q}`, i, big)})
	}
	var c *client
	e.srv.hub.mu.Lock()
	for cl := range e.srv.hub.clients {
		c = cl
	}
	e.srv.hub.mu.Unlock()
	if n := len(c.ch); n > 8 {
		t.Fatalf("the page's buffer holds %d events, more than 8", n)
	}
	// Reading again, the page is told how many it lost.
	dropped := make(chan int, 1)
	go func() {
		total := 0
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if sc.Text() != "event: dropped" || !sc.Scan() {
				continue
			}
			var d struct {
				Count int `json:"count"`
			}
			if json.Unmarshal([]byte(strings.TrimPrefix(sc.Text(), "data: ")), &d) == nil {
				total += d.Count
			}
			if total >= 500 {
				break
			}
		}
		dropped <- total
	}()
	select {
	case n := <-dropped:
		if n < 500 {
			t.Errorf("told of %d dropped events, want most of the 3000", n)
		}
	case <-time.After(testWait):
		t.Fatalf("no dropped notice within %s", testWait)
	}
}

func TestRawStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.RawRate = 1000 })
	acme := e.org("acme")
	e.device(acme, "d1")
	if err := e.srv.catalog.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "TELEMETRY", Subjects: []string{"devices.>", "energy.>"}}); err != nil {
		t.Fatal(err)
	}
	plain := e.openSSE("", nil)
	// Once the health panel was sent, the viewer has made its JetStream
	// requests and holds every subscription it keeps.
	if _, ok := plain.next(testWait, kindHealth); !ok {
		t.Fatal("no health event")
	}
	// The stream itself listens on its subjects, so count the viewer's own
	// subscriptions: the raw stream adds one per subject of the stream.
	subs := func() int { return e.srv.nc.NumSubscriptions() }
	base := subs()
	raw := e.openSSE("?raw=1&org=acme", nil)
	testutil.Eventually(t, testWait, "raw subscriptions", func() error {
		n := subs()
		return holds(n == base+2, "%d subscriptions, want %d", n, base+2)
	})

	msg := nats.NewMsg("devices.d1.telemetry")
	msg.Data = []byte(`{"t": 21.5}`)
	msg.Header.Set(jetstream.MsgIDHeader, "dev-42")
	if _, err := e.js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	// Not this organization's: filtered out.
	if _, err := e.js.Publish(t.Context(), "devices.unknown.telemetry", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	ev, ok := raw.next(testWait, kindRaw)
	if !ok {
		t.Fatal("no raw event")
	}
	var re rawEvent
	if err := json.Unmarshal([]byte(ev.data), &re); err != nil {
		t.Fatal(err)
	}
	if re.Subject != "devices.d1.telemetry" || re.MsgID != "dev-42" || re.Payload != `{"t": 21.5}` || !re.Known || re.Organization != "acme" || re.Device != "d1" {
		t.Errorf("raw event %+v", re)
	}
	if ev, ok := raw.next(300*time.Millisecond, kindRaw); ok {
		t.Errorf("another organization's raw message reached the filtered page: %s", ev.data)
	}
	if ev, ok := plain.next(300*time.Millisecond, kindRaw); ok {
		t.Errorf("a page that did not ask got a raw event: %s", ev.data)
	}
	raw.close()
	testutil.Eventually(t, testWait, "raw subscriptions removed", func() error {
		n := subs()
		return holds(n == base, "%d subscriptions, want %d", n, base)
	})
}

func TestShutdownEndsLiveConnections(t *testing.T) {
	t.Parallel()
	// A grace far longer than a prompt stop takes even on a busy machine,
	// so a stop that waited for the page shows.
	const grace = time.Minute
	e := newEnv(t, func(c *Config) { c.ShutdownGrace = grace })
	s := e.openSSE("", nil)
	if _, ok := s.next(testWait, "hello"); !ok {
		t.Fatal("no hello")
	}
	start := time.Now()
	if err := e.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(start); took > grace/2 {
		t.Errorf("stop took %s with a page connected", took)
	}
	select {
	case _, open := <-s.events:
		for open {
			_, open = <-s.events
		}
	case <-time.After(testWait):
		t.Fatal("the live connection stayed open after the stop")
	}
	if res, err := http.Get(e.url + "/healthz"); err == nil {
		res.Body.Close()
		t.Error("the viewer still answers after its stop")
	}
	// Run twice is refused.
	if err := e.srv.Run(context.Background()); !errors.Is(err, ErrAlreadyRun) {
		t.Errorf("second Run: %v", err)
	}
}
