package viewer

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// The kinds of event a live connection carries.
const (
	kindTelemetry = "telemetry" // a processed message, from the analytics subjects
	kindInvalid   = "invalid"   // an invalid message, from the invalid-event subjects
	kindRaw       = "raw"       // a message as it arrived, before validation
	kindHealth    = "health"    // the health panel
	kindNotice    = "notice"    // something the page should say, such as a raw stream that cannot be read
)

// event is one message for the pages, encoded once for all of them.
type event struct {
	// seq orders the telemetry and invalid events; 0 for the others, which
	// are not replayed.
	seq  uint64
	kind string
	// org, device (uuid), deviceExt (external id) and topic are what the
	// filters match.
	org, device, deviceExt, topic string
	data                          []byte
}

// filter is what one page asked to see; empty fields match everything.
type filter struct {
	org, device, topic string
}

// matches reports whether e passes the filter. Health and notices are
// never filtered. device matches the uuid or the external id.
func (f filter) matches(e *event) bool {
	if e.kind == kindHealth || e.kind == kindNotice {
		return true
	}
	if f.org != "" && !strings.EqualFold(f.org, e.org) {
		return false
	}
	if f.device != "" && f.device != e.device && f.device != e.deviceExt {
		return false
	}
	return f.topic == "" || f.topic == e.topic
}

// client is one live connection.
type client struct {
	// key names who opened it (see [Server.clientKey]), for the per-client
	// limit.
	key    string
	filter filter
	raw    bool
	// ch holds the events waiting for the page. It never grows: when it is
	// full, newer events are dropped and counted in dropped, and the page is
	// told how many before the next event it gets.
	ch      chan *event
	dropped atomic.Uint64
}

// hub fans events out to the live connections and keeps the latest ones
// for pages that connect or reconnect.
type hub struct {
	epoch      string
	buffer     int
	maxClients int
	// maxPerKey bounds the live connections of one client key.
	maxPerKey int
	metrics   *metrics
	// onRawDemand, if set, is called (without the lock) when the number of
	// pages that want the raw stream goes from 0 to 1 or from 1 to 0.
	onRawDemand func()

	mu      sync.Mutex
	seq     uint64
	ring    []*event // the last len(ring) telemetry and invalid events
	next    int      // where the next one goes
	count   int      // how many the ring holds
	clients map[*client]struct{}
	perKey  map[string]int // live connections by client key
	raws    int
	health  *event // the latest health event, for a page that connects
}

func newHub(epoch string, backlog, buffer, maxClients, maxPerKey int, m *metrics) *hub {
	return &hub{
		epoch: epoch, buffer: buffer, maxClients: maxClients, maxPerKey: maxPerKey, metrics: m,
		ring:    make([]*event, backlog),
		clients: map[*client]struct{}{},
		perKey:  map[string]int{},
	}
}

// eventID is the SSE id of a replayable event.
func (h *hub) eventID(e *event) string {
	return h.epoch + "-" + strconv.FormatUint(e.seq, 10)
}

// replayFrom parses a Last-Event-ID; ok is false when it is not one of this
// hub's (another replica's, or from before a restart).
func (h *hub) replayFrom(lastID string) (seq uint64, ok bool) {
	ep, n, found := strings.Cut(lastID, "-")
	if !found || ep != h.epoch {
		return 0, false
	}
	seq, err := strconv.ParseUint(n, 10, 64)
	return seq, err == nil
}

// subscribe adds a live connection of the client key. It returns the
// events the page should get first: the ones after lastID when the hub
// still has them all (gap is true when it has not), else the latest
// `recent` matching ones; then the latest health. Registering and
// collecting happen under one lock, so the page neither misses an event
// nor gets one twice. A key that holds its share already gets
// [ErrTooManyFromClient], checked first so that a client over its share
// is told so even when the viewer is full.
func (h *hub) subscribe(key string, f filter, raw bool, lastID string, recent int) (c *client, first []*event, gap bool, err error) {
	h.mu.Lock()
	if h.perKey[key] >= h.maxPerKey {
		h.mu.Unlock()
		h.metrics.refused.WithLabelValues("per_client").Inc()
		return nil, nil, false, ErrTooManyFromClient
	}
	if len(h.clients) >= h.maxClients {
		h.mu.Unlock()
		h.metrics.refused.WithLabelValues("total").Inc()
		return nil, nil, false, ErrTooManyClients
	}
	c = &client{key: key, filter: f, raw: raw, ch: make(chan *event, h.buffer)}
	h.clients[c] = struct{}{}
	h.perKey[key]++
	rawStarted := false
	if raw {
		h.raws++
		rawStarted = h.raws == 1
	}
	var matching []*event
	from, resume := h.replayFrom(lastID)
	oldest := h.seq - uint64(h.count) + 1 // the oldest seq the ring holds
	if resume && from+1 < oldest && from < h.seq {
		gap = true
	}
	for i := 0; i < h.count; i++ {
		e := h.ring[(h.next-h.count+i+len(h.ring))%len(h.ring)]
		if resume && e.seq <= from {
			continue
		}
		if f.matches(e) {
			matching = append(matching, e)
		}
	}
	if !resume && len(matching) > recent {
		matching = matching[len(matching)-recent:]
	}
	first = matching
	if h.health != nil {
		first = append(first, h.health)
	}
	n := len(h.clients)
	h.mu.Unlock()
	h.metrics.clients.Set(float64(n))
	if rawStarted && h.onRawDemand != nil {
		h.onRawDemand()
	}
	return c, first, gap, nil
}

// unsubscribe removes a live connection.
func (h *hub) unsubscribe(c *client) {
	h.mu.Lock()
	if _, ok := h.clients[c]; !ok {
		h.mu.Unlock()
		return
	}
	delete(h.clients, c)
	if h.perKey[c.key]--; h.perKey[c.key] <= 0 {
		delete(h.perKey, c.key)
	}
	rawStopped := false
	if c.raw {
		h.raws--
		rawStopped = h.raws == 0
	}
	n := len(h.clients)
	h.mu.Unlock()
	h.metrics.clients.Set(float64(n))
	if rawStopped && h.onRawDemand != nil {
		h.onRawDemand()
	}
}

// rawDemand returns how many pages want the raw stream.
func (h *hub) rawDemand() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.raws
}

// clientCount returns how many pages are connected.
func (h *hub) clientCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

// publish hands e to every page that wants it, without ever waiting for
// one: a page whose buffer is full loses the event and is told so later.
// Telemetry and invalid events are numbered and kept for replay.
func (h *hub) publish(e *event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch e.kind {
	case kindTelemetry, kindInvalid:
		h.seq++
		e.seq = h.seq
		h.ring[h.next] = e
		h.next = (h.next + 1) % len(h.ring)
		h.count = min(h.count+1, len(h.ring))
	case kindHealth:
		h.health = e
	}
	h.metrics.events.WithLabelValues(e.kind).Inc()
	for c := range h.clients {
		if e.kind == kindRaw && !c.raw {
			continue
		}
		if !c.filter.matches(e) {
			continue
		}
		select {
		case c.ch <- e:
		default:
			if e.kind != kindHealth { // a newer health event follows anyway
				c.dropped.Add(1)
				h.metrics.dropped.Inc()
			}
		}
	}
}

// metrics are the viewer's Prometheus metrics.
type metrics struct {
	clients prometheus.Gauge
	events  *prometheus.CounterVec
	dropped prometheus.Counter
	skipped prometheus.Counter
	refused *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "telemesh_viewer_live_connections", Help: "Pages connected to the live event stream.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "telemesh_viewer_events_total", Help: "Events handed to the live connections, by kind.",
		}, []string{"kind"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "telemesh_viewer_events_dropped_total", Help: "Events a slow page did not get because its buffer was full.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "telemesh_viewer_raw_skipped_total", Help: "Raw messages not sent to pages because of the raw rate limit.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "telemesh_viewer_live_refused_total",
			Help: "Live connections refused: per_client when the client held its share, total when the viewer was full.",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.clients, m.events, m.dropped, m.skipped, m.refused)
	}
	return m
}
