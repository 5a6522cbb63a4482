package viewer

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/telemesh/telemesh/internal/health"
	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/pipelinestate"
)

// The failure-rate badges, as the old viewer named them.
const (
	BadgeStable   = "Stable"
	BadgeWatch    = "Watch"
	BadgeHighRisk = "High Risk"
)

// BadgePaused is the badge while the global pipeline switch is off: a
// pause on purpose, neither a failure rate nor a fault.
const BadgePaused = "Paused"

// Badge returns the badge of a failure rate in percent: [BadgeHighRisk]
// from 25 %, [BadgeWatch] from 10 %, else [BadgeStable].
func Badge(percent float64) string {
	switch {
	case percent >= 25:
		return BadgeHighRisk
	case percent >= 10:
		return BadgeWatch
	default:
		return BadgeStable
	}
}

// The windows of the health panel, in minutes.
const (
	shortWindow = 5
	longWindow  = 60
)

// latestPublishFailed is how many publish_failed rows the panel lists.
const latestPublishFailed = 10

// failuresShown is how many causes of failure the panel lists a window.
const failuresShown = 15

// callTimeout bounds each call the panel makes to NATS and each stage's
// health call.
const callTimeout = 2 * time.Second

// Health is the health panel at one moment: the pipeline's state as
// package pipelinestate reads it, which status and doctor show too.
type Health struct {
	At time.Time `json:"at"`
	// Badge is what the page's badge shows: [BadgePaused] while the global
	// pipeline switch is off, else the five-minute failure rate's badge.
	Badge string `json:"badge"`
	// Pause is set while the global pipeline switch is off: since when, by
	// whom, and the backlog waiting in the stream.
	Pause *pipelinestate.Pause `json:"pause,omitempty"`
	// Stages is what each stage did over the last five minutes.
	Stages []StageStats `json:"stages"`
	// Rate5m and Rate1h are the failure rates of the messages received in
	// the last five minutes and the last hour.
	Rate5m FailureRate `json:"rate_5m"`
	Rate1h FailureRate `json:"rate_1h"`
	// Failures5m and Failures1h group those failures by stage, status and
	// reason, the most frequent first.
	Failures5m []Failure `json:"failures_5m"`
	Failures1h []Failure `json:"failures_1h"`
	// SlowAt is when the one-hour figures were computed; they refresh less
	// often than the rest.
	SlowAt        time.Time     `json:"slow_at"`
	PublishFailed PublishFailed `json:"publish_failed"`
	Backlog       *Backlog      `json:"backlog,omitempty"`
	// Switches are the global row first, then every organization's, with
	// the values in effect.
	Switches []ops.SwitchRow `json:"switches"`
	Parked   int64           `json:"parked"`
	// StageHealth is each stage's gRPC health, when the viewer knows their
	// addresses.
	StageHealth []health.StageHealth `json:"stage_health,omitempty"`
	// Errors names the parts that could not be read, with why.
	Errors map[string]string `json:"errors,omitempty"`
}

// StageStats is what one stage did in the window.
type StageStats = pipelinestate.StageStats

// Failure is how many messages one cause failed in a window: a stage, its
// stage-log status and the reason code, with the text of the latest.
type Failure = pipelinestate.Count

// FailureRate is the share of the messages received in a window that
// failed: halted at ingress or by validation, dead-lettered, refused by
// Postgres, or not published ([pipelinestate.Activity.Failed]).
type FailureRate struct {
	Minutes  int     `json:"minutes"`
	Messages int64   `json:"messages"`
	Failed   int64   `json:"failed"`
	Percent  float64 `json:"percent"`
	Badge    string  `json:"badge"`
}

// rateOf is the failure rate of a window's activity.
func rateOf(a pipelinestate.Activity) FailureRate {
	p := a.FailedPercent()
	return FailureRate{Minutes: a.Minutes, Messages: a.Received(), Failed: a.Failed(), Percent: p, Badge: Badge(p)}
}

// PublishFailed is the publish outbox's failed rows.
type PublishFailed struct {
	// Total counts the rows that wait for another publish attempt.
	Total  int64              `json:"total"`
	Latest []PublishFailedRow `json:"latest"`
}

// PublishFailedRow is one telemetry row whose publish failed.
type PublishFailedRow = pipelinestate.PublishFailedRow

// Backlog is the gateway's consumer: what waits in the stream for it.
type Backlog struct {
	Stream         string `json:"stream"`
	Consumer       string `json:"consumer"`
	StreamMessages uint64 `json:"stream_messages"`
	// Pending is not delivered yet; AckPending delivered and not finished.
	Pending     uint64 `json:"pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
	Waiting     int    `json:"waiting_pulls"`
	// Total is Pending plus AckPending.
	Total uint64 `json:"total"`
}

// backlogOf is the backlog of a stream and its consumer.
func backlogOf(st *pipelinestate.StreamInfo, c *pipelinestate.ConsumerInfo) *Backlog {
	return &Backlog{
		Stream: st.Name, Consumer: c.Name, StreamMessages: st.Messages,
		Pending: c.Pending, AckPending: c.AckPending, Redelivered: c.Redelivered, Waiting: c.WaitingPulls,
		Total: c.Pending + uint64(max(c.AckPending, 0)),
	}
}

// healthCache computes the health panel, at most once per refresh interval
// however many pages ask, and sends it to the live connections.
type healthCache struct {
	s    *Server
	kick chan struct{}
	// stale is set by a change (a retry, a switch), so the next request
	// computes the panel again rather than wait for the interval.
	stale atomic.Bool

	mu   sync.Mutex // held while computing
	cur  *Health
	slow struct {
		at          time.Time
		rate        FailureRate
		failures    []Failure
		stageHealth []health.StageHealth
		errs        map[string]string
	}
}

func newHealthCache(s *Server) *healthCache {
	return &healthCache{s: s, kick: make(chan struct{}, 1)}
}

// refreshSoon asks for a fresh panel now, after a change (a retry, a
// switch); it never blocks.
func (hc *healthCache) refreshSoon() {
	hc.stale.Store(true)
	select {
	case hc.kick <- struct{}{}:
	default:
	}
}

// run refreshes the panel and sends it to the pages while any is
// connected, until ctx ends.
func (hc *healthCache) run(ctx context.Context) {
	t := time.NewTicker(hc.s.cfg.HealthEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-hc.kick:
		}
		if hc.s.hub.clientCount() == 0 {
			continue
		}
		h, err := hc.get(ctx)
		if err != nil {
			continue
		}
		hc.broadcast(h)
	}
}

// broadcast sends h to the live connections.
func (hc *healthCache) broadcast(h *Health) {
	data, err := json.Marshal(h)
	if err != nil {
		return
	}
	hc.s.hub.publish(&event{kind: kindHealth, data: data})
}

// get returns the panel, computing it when the last one is older than the
// refresh interval.
func (hc *healthCache) get(ctx context.Context) (*Health, error) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.cur != nil && !hc.stale.Load() && time.Since(hc.cur.At) < hc.s.cfg.HealthEvery*9/10 {
		return hc.cur, nil
	}
	// Cleared before computing: a change made meanwhile marks it again.
	hc.stale.Store(false)
	h, err := hc.compute(ctx)
	if err != nil {
		return nil, err
	}
	hc.cur = h
	return h, nil
}

// compute reads everything the panel shows. A part that cannot be read is
// named in Errors; the rest is still shown.
func (hc *healthCache) compute(ctx context.Context) (*Health, error) {
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	s := hc.s
	h := &Health{At: time.Now().UTC(), Errors: map[string]string{}}
	note := func(part string, err error) {
		if err != nil {
			h.Errors[part] = err.Error()
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	h.Rate5m = FailureRate{Minutes: shortWindow, Badge: BadgeStable}
	if act, err := s.state.Activity(qctx, shortWindow, true); err != nil {
		note("stages", err)
		note("failures_5m", err)
	} else {
		h.Stages, h.Rate5m, h.Failures5m = act.StageStats(), rateOf(act), act.Failures(failuresShown)
	}
	ob, err := s.state.Outbox(qctx, shortWindow)
	note("publish_failed", err)
	h.PublishFailed.Total = ob.PublishFailed
	if err == nil {
		h.PublishFailed.Latest, err = s.state.LatestPublishFailed(qctx, latestPublishFailed)
		note("publish_failed", err)
	}
	h.Switches, err = s.state.Switches(qctx)
	note("switches", err)
	h.Parked, err = s.state.ParkedTotal(qctx)
	note("parked", err)
	var consumer *pipelinestate.ConsumerInfo
	stream, err := s.state.Stream(qctx)
	if err == nil {
		consumer, err = s.state.Consumer(qctx)
	}
	note("backlog", err)
	if err == nil {
		h.Backlog = backlogOf(stream, consumer)
	}

	if time.Since(hc.slow.at) >= s.cfg.SlowEvery {
		hc.slow.errs = map[string]string{}
		act, err := s.state.Activity(qctx, longWindow, false)
		if err != nil {
			hc.slow.errs["failures_1h"] = err.Error()
		} else {
			hc.slow.rate, hc.slow.failures = rateOf(act), act.Failures(failuresShown)
		}
		if len(s.cfg.Targets) > 0 {
			hc.slow.stageHealth = s.state.StageHealth(qctx)
		}
		hc.slow.at = time.Now().UTC()
	}
	h.Rate1h, h.Failures1h, h.StageHealth, h.SlowAt = hc.slow.rate, hc.slow.failures, hc.slow.stageHealth, hc.slow.at
	h.Pause = pipelinestate.PauseOf(h.Switches, consumer)
	h.Badge = h.Rate5m.Badge
	if h.Pause != nil {
		h.Badge = BadgePaused
	}
	for k, v := range hc.slow.errs {
		h.Errors[k] = v
	}
	if len(h.Errors) == 0 {
		h.Errors = nil
	}
	return h, nil
}
