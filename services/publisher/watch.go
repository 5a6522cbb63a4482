package publisher

import (
	"sync"
	"time"
)

// presence is what the publisher last saw of one NATS resource it writes
// to: there, or down since a time. Only a change is logged, so an outage
// is two warnings however many batches and retry rounds fail meanwhile.
type presence struct {
	mu      sync.Mutex
	down    bool
	changed time.Time
}

// observe records what a batch that started at started saw: down, or not
// down and at least one write went through (ok). A batch that saw neither
// says nothing. It returns whether the state changed, and for a return,
// how long the resource was down. A batch that started before the last
// change is ignored: it may have failed against the state that change
// already ended, and would otherwise log the loss again.
func (p *presence) observe(started time.Time, down, ok bool) (changed bool, downFor time.Duration) {
	if !down && !ok {
		return false, 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if down == p.down || started.Before(p.changed) {
		return false, 0
	}
	now := time.Now()
	if p.down {
		downFor = now.Sub(p.changed)
	}
	p.down, p.changed = down, now
	return true, downFor
}

// observeBucket logs, once per change, that the KV bucket went down or came
// back. Both are warnings: the pair bounds an incident in a log read at
// warning level.
func (p *Emitter) observeBucket(started time.Time, wrote bool, down *ResourceError) {
	changed, downFor := p.bucket.observe(started, down != nil, wrote)
	switch {
	case !changed:
	case down != nil:
		p.logger.Warn("KV bucket lost: device states are not written and rows stay publish_failed until it is back",
			"bucket", p.states.Bucket(), "reason", down.Error(),
			"fix", RebuildCommand(p.nats)+" makes it again with the publisher's settings and refills it from Postgres")
	default:
		p.logger.Warn("KV bucket back: device states are written again and the retry loop publishes the publish_failed rows",
			"bucket", p.states.Bucket(), "down_for", downFor.Round(time.Millisecond).String(),
			"note", "if it came back empty, devices that have not published since are missing from it until "+RebuildCommand(p.nats))
	}
}

// observeStream logs, once per change, that the analytics stream went down
// or came back.
func (p *Emitter) observeStream(started time.Time, acked bool, down *ResourceError) {
	changed, downFor := p.stream.observe(started, down != nil, acked)
	switch {
	case !changed:
	case down != nil:
		p.logger.Warn("analytics stream lost: events are not published and rows stay publish_failed until it is back",
			"stream", p.nats.AnalyticsStream, "reason", down.Error(),
			"fix", "restart the publisher (telemesh serve publisher): it creates the stream at start")
	default:
		p.logger.Warn("analytics stream back: events are published again and the retry loop publishes the publish_failed rows",
			"stream", p.nats.AnalyticsStream, "down_for", downFor.Round(time.Millisecond).String())
	}
}
