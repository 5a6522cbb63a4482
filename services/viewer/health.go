package viewer

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/health"
	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/outbox"
	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
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

// failedMessages counts the messages received in the last minutes that
// failed: halted by validation, failed terminally, or left publish_failed.
// The rows left publish_failed are found among the rows the publish
// outbox holds, which no index on device_telemetry_logs covers.
const failedMessages = `select
	(select count(*) from ingestion_messages
	 where status in ('failed_validation', 'failed_terminal') and received_at > now() - make_interval(mins => $1)) +
	(select count(*) from (select distinct id, recorded_from, recorded_to from (` + outbox.RowsSQL + `) r) o
	 join device_telemetry_logs t on t.id = o.id and t.recorded_at between o.recorded_from and o.recorded_to
	 where t.processing_state = 'publish_failed' and t.received_at > now() - make_interval(mins => $1))`

// receivedMessages counts the messages the gateway took in the last
// minutes, from the per-minute counts of its stage rows (a delivery that
// was retried is counted once it ends).
const receivedMessages = `select coalesce(sum(rows), 0) from ingestion_stage_counts
	where stage = 'ingress' and status <> 'retrying' and minute >= date_trunc('minute', now() - make_interval(mins => $1))`

// failuresByCode groups the failures the stages logged in the last minutes
// by stage, status and reason code (the code the stage set where it decided
// the failure), counting each message once however often it was retried.
// An inactive device's message is evidence kept on purpose, not a failure.
// Both read only the rows that are not completed, through their partial
// index, and the example of each group is found apart, so the grouping
// reads no jsonb.
const failuresByCode = `
with g as (
	select stage, status, reason_code, count(distinct message_id) as n from ingestion_stage_logs
	where status in ('halted', 'failed') and status <> 'completed' and reason_code is distinct from 'inactive'
	  and created_at > now() - make_interval(mins => $1)
	group by 1, 2, 3)
select g.stage, g.status, coalesce(g.reason_code, ''), g.n, coalesce(left(x.example, $2), '')
from g left join lateral (
	select coalesce(l.errors->>'reason', l.errors::text) as example from ingestion_stage_logs l
	where l.stage = g.stage and l.status = g.status and l.status <> 'completed' and l.reason_code is not distinct from g.reason_code
	  and l.created_at > now() - make_interval(mins => $1)
	order by l.created_at desc limit 1) x on true
order by 4 desc, 3, 1
limit 15`

// publishFailedRows are the publish_failed telemetry rows, found among the
// rows the publish outbox holds: no index on device_telemetry_logs covers
// processing_state.
const publishFailedRows = `select t.* from (select distinct id, recorded_from, recorded_to from (` + outbox.RowsSQL + `) r) o
	join device_telemetry_logs t on t.id = o.id and t.recorded_at between o.recorded_from and o.recorded_to
	where t.processing_state = 'publish_failed'`

// latestPublishFailed is how many publish_failed rows the panel lists.
const latestPublishFailed = 10

// Health is the health panel at one moment.
type Health struct {
	At time.Time `json:"at"`
	// Badge is what the page's badge shows: [BadgePaused] while the global
	// pipeline switch is off, else the five-minute failure rate's badge.
	Badge string `json:"badge"`
	// Pause is set while the global pipeline switch is off: since when, by
	// whom, and the backlog waiting in the stream.
	Pause *health.Pause `json:"pause,omitempty"`
	// Stages is what each stage logged over the last five minutes.
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

// StageStats is what one stage logged in the window.
type StageStats struct {
	Stage string `json:"stage"`
	// Count is the messages the stage handled, whatever the stage-log mode
	// wrote of them.
	Count     int64   `json:"count"`
	PerSecond float64 `json:"per_second"`
	// Failed counts the rows whose status is halted or failed.
	Failed int64 `json:"failed"`
	// P50US and P99US are read off a histogram with two buckets per
	// doubling, so they are within about 40 % of the exact figures.
	P50US int64 `json:"p50_us"`
	P99US int64 `json:"p99_us"`
}

// FailureRate is the share of the messages received in a window that
// failed: halted by validation, failed terminally (malformed, unknown
// topic, dead-lettered) or left publish_failed.
type FailureRate struct {
	Minutes  int     `json:"minutes"`
	Messages int64   `json:"messages"`
	Failed   int64   `json:"failed"`
	Percent  float64 `json:"percent"`
	Badge    string  `json:"badge"`
}

// Failure is how many messages one cause failed in a window: a stage, its
// stage-log status and the reason code, with the text of the latest.
type Failure struct {
	Stage  string `json:"stage"`
	Status string `json:"status"`
	// Code is the reason code (package reason); reason.Unclassified for
	// rows written before codes were recorded.
	Code    string `json:"code"`
	Count   int64  `json:"count"`
	Example string `json:"example"`
}

// PublishFailed is the publish outbox's failed rows.
type PublishFailed struct {
	Total  int64              `json:"total"`
	Latest []PublishFailedRow `json:"latest"`
}

// PublishFailedRow is one telemetry row whose publish failed.
type PublishFailedRow struct {
	MessageID     uuid.UUID  `json:"message_id"`
	Organization  string     `json:"organization"`
	Device        string     `json:"device"`
	Topic         string     `json:"topic"`
	Reason        string     `json:"reason"`
	Attempts      int32      `json:"attempts"`
	RecordedAt    time.Time  `json:"recorded_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	NextPublishAt *time.Time `json:"next_publish_at,omitempty"`
}

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
	var err error
	h.Stages, err = s.stageStats(qctx, shortWindow)
	note("stages", err)
	h.Rate5m, h.Failures5m, err = s.failures(qctx, shortWindow)
	note("failures_5m", err)
	h.PublishFailed, err = s.publishFailed(qctx)
	note("publish_failed", err)
	h.Switches, err = s.switches(qctx)
	note("switches", err)
	err = s.pool.QueryRow(qctx, `select count(*) from ingestion_messages where status = 'parked'`).Scan(&h.Parked)
	note("parked", err)
	h.Backlog, err = s.backlog(qctx)
	note("backlog", err)

	if time.Since(hc.slow.at) >= s.cfg.SlowEvery {
		hc.slow.errs = map[string]string{}
		rate, failures, err := s.failures(qctx, longWindow)
		if err != nil {
			hc.slow.errs["failures_1h"] = err.Error()
		} else {
			hc.slow.rate, hc.slow.failures = rate, failures
		}
		if len(s.cfg.Targets) > 0 {
			hc.slow.stageHealth = health.CheckStages(qctx, s.cfg.Targets, 2*time.Second)
		}
		hc.slow.at = time.Now().UTC()
	}
	h.Rate1h, h.Failures1h, h.StageHealth, h.SlowAt = hc.slow.rate, hc.slow.failures, hc.slow.stageHealth, hc.slow.at
	h.Pause = pause(h.Switches, h.Backlog)
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

// pause returns the pause of the global switch row (the first of rows),
// or nil while the pipeline is on.
func pause(rows []ops.SwitchRow, backlog *Backlog) *health.Pause {
	if len(rows) == 0 || rows[0].OrganizationID != nil || rows[0].Switches.PipelineEnabled {
		return nil
	}
	p := &health.Pause{By: rows[0].UpdatedBy}
	if rows[0].UpdatedAt != nil {
		p.Since = rows[0].UpdatedAt.UTC()
	}
	if backlog != nil {
		p.Backlog = backlog.Pending
	}
	return p
}

// stageStats summarises the stage logs of the last minutes, from their
// per-minute counts and duration histograms.
func (s *Server) stageStats(ctx context.Context, minutes int) ([]StageStats, error) {
	rows, err := s.pool.Query(ctx, `select stage, status, rows, durations from ingestion_stage_counts
		where minute >= date_trunc('minute', now() - make_interval(mins => $1))`, minutes)
	if err != nil {
		return nil, fmt.Errorf("stage logs: %w", err)
	}
	by := map[string]*StageStats{}
	hist := map[string][]int64{}
	for rows.Next() {
		var (
			stage, status string
			n             int64
			durations     []int64
		)
		if err := rows.Scan(&stage, &status, &n, &durations); err != nil {
			rows.Close()
			return nil, fmt.Errorf("stage logs: %w", err)
		}
		st := by[stage]
		if st == nil {
			st = &StageStats{Stage: stage}
			by[stage] = st
		}
		st.Count += n
		if status == stagelog.StatusHalted || status == stagelog.StatusFailed {
			st.Failed += n
		}
		hist[stage] = stagelog.AddHistograms(hist[stage], durations)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("stage logs: %w", err)
	}
	out := make([]StageStats, 0, len(by))
	for stage, st := range by {
		st.P50US, st.P99US = stagelog.Percentile(hist[stage], 0.5), stagelog.Percentile(hist[stage], 0.99)
		st.PerSecond = float64(st.Count) / float64(minutes*60)
		out = append(out, *st)
	}
	// Every stage has a row, so the panel's table keeps its shape.
	have := map[string]bool{}
	for _, st := range out {
		have[st.Stage] = true
	}
	for _, stage := range pipeline.Stages() {
		if !have[string(stage)] {
			out = append(out, StageStats{Stage: string(stage)})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		return pipeline.Stage(out[i].Stage).Order() < pipeline.Stage(out[j].Stage).Order()
	})
	return out, nil
}

// failures returns the failure rate of the messages received in the last
// minutes and their failures grouped by reason code.
func (s *Server) failures(ctx context.Context, minutes int) (FailureRate, []Failure, error) {
	rate := FailureRate{Minutes: minutes, Badge: BadgeStable}
	rows, err := s.pool.Query(ctx, failuresByCode, minutes, pipeline.ReasonWidth)
	if err != nil {
		return rate, nil, fmt.Errorf("failures: %w", err)
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Failure, error) {
		var f Failure
		err := r.Scan(&f.Stage, &f.Status, &f.Code, &f.Count, &f.Example)
		if f.Code == "" {
			f.Code = reason.Unclassified
		}
		return f, err
	})
	if err != nil {
		return rate, nil, fmt.Errorf("failures: %w", err)
	}
	if err := s.pool.QueryRow(ctx, failedMessages, minutes).Scan(&rate.Failed); err != nil {
		return rate, nil, fmt.Errorf("failed messages: %w", err)
	}
	if err := s.pool.QueryRow(ctx, receivedMessages, minutes).Scan(&rate.Messages); err != nil {
		return rate, nil, fmt.Errorf("messages: %w", err)
	}
	if rate.Messages > 0 {
		rate.Percent = min(100, 100*float64(rate.Failed)/float64(rate.Messages))
	}
	rate.Badge = Badge(rate.Percent)
	return rate, all, nil
}

// publishFailed returns how many rows are publish_failed and the latest.
func (s *Server) publishFailed(ctx context.Context) (PublishFailed, error) {
	var pf PublishFailed
	if err := s.pool.QueryRow(ctx, `select count(*) from (`+publishFailedRows+`) x`).Scan(&pf.Total); err != nil {
		return pf, fmt.Errorf("publish_failed rows: %w", err)
	}
	rows, err := s.pool.Query(ctx, `select t.id, coalesce(o.slug, ''), coalesce(d.external_id, t.device_id::text), t.topic,
			coalesce(t.failure_reason, ''), t.publish_attempts, t.recorded_at, t.updated_at, t.next_publish_at
		from (`+publishFailedRows+`) t
		left join devices d on d.id = t.device_id
		left join organizations o on o.id = t.organization_id
		order by t.updated_at desc limit $1`, latestPublishFailed)
	if err != nil {
		return pf, fmt.Errorf("publish_failed rows: %w", err)
	}
	pf.Latest, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (PublishFailedRow, error) {
		var p PublishFailedRow
		err := r.Scan(&p.MessageID, &p.Organization, &p.Device, &p.Topic, &p.Reason, &p.Attempts, &p.RecordedAt, &p.UpdatedAt, &p.NextPublishAt)
		return p, err
	})
	if err != nil {
		return pf, fmt.Errorf("publish_failed rows: %w", err)
	}
	return pf, nil
}

// switches returns the global switches and every organization's, those
// without a row of their own included (all on).
func (s *Server) switches(ctx context.Context) ([]ops.SwitchRow, error) {
	rows, err := ops.GetSwitches(ctx, s.pool, "")
	if err != nil {
		return nil, err
	}
	have := map[uuid.UUID]bool{}
	for _, r := range rows {
		if r.OrganizationID != nil {
			have[*r.OrganizationID] = true
		}
	}
	var missing []ops.SwitchRow
	if snap := s.catalog.Snapshot(); snap != nil {
		for id, o := range snap.Organizations {
			if have[id] {
				continue
			}
			id := id
			missing = append(missing, ops.SwitchRow{
				OrganizationID: &id, Organization: o.Slug,
				Switches: ops.Switches{PipelineEnabled: true, PublishAnalytics: true, PublishInvalidEvents: true},
				// An organization without a row follows the global one.
				Effective: rows[0].Switches,
			})
		}
	}
	rows = append(rows, missing...)
	orgs := rows[1:]
	sort.Slice(orgs, func(i, j int) bool { return orgs[i].Organization < orgs[j].Organization })
	return rows, nil
}

// backlog reads the gateway's consumer.
func (s *Server) backlog(ctx context.Context) (*Backlog, error) {
	b := &Backlog{Stream: s.cfg.Stream, Consumer: s.cfg.Consumer}
	st, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", s.cfg.Stream, err)
	}
	si, err := st.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", s.cfg.Stream, err)
	}
	b.StreamMessages = si.State.Msgs
	c, err := st.Consumer(ctx, s.cfg.Consumer)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", s.cfg.Consumer, s.cfg.Stream, err)
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", s.cfg.Consumer, err)
	}
	b.Pending, b.AckPending, b.Redelivered, b.Waiting = ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting
	b.Total = b.Pending + uint64(max(b.AckPending, 0))
	return b, nil
}
