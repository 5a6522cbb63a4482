package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/pipeline"
)

// ErrCASExhausted is returned when a device's state kept changing under every
// compare-and-set attempt.
var ErrCASExhausted = errors.New("device state kept changing; compare-and-set attempts exhausted")

// stateWriters bounds the device-state writes of one batch in flight at
// once.
const stateWriters = 16

// Item is one telemetry row to publish.
type Item struct {
	MessageID        uuid.UUID
	DedupeKey        string
	OrganizationID   uuid.UUID
	OrganizationSlug string
	DeviceUUID       string
	DeviceExternalID string
	Topic            string
	RecordedAt       time.Time
	// Values and Unresolved are JSON objects: the row's transformed values
	// and the values it could not compute, with their reasons. Unresolved
	// is nil when there are none.
	Values     json.RawMessage
	Unresolved json.RawMessage
	// Invalid marks a row that failed validation: it is published as an
	// invalid event, if the organization wants those, and never to KV.
	Invalid          bool
	ValidationErrors []envelope.ValidationError
	InvalidReason    string
	Attempt          int
	// Traceparent is the message's trace context, put on its event so a
	// consumer continues the message's trace; "" when it has none.
	Traceparent string
}

// ItemResult is what happened to one item.
type ItemResult struct {
	// Err is why the publish failed; nil means published (or skipped on
	// purpose by a switch).
	Err error
	// Subjects are where the item was (or, on a dry run, would be) published.
	Subjects []string
	// Skipped says a switch turned the publish off.
	Skipped string
}

// Emitter writes device state to the KV bucket and events to the analytics
// and invalid subjects: what the publish stage emits to NATS.
type Emitter struct {
	js       jetstream.JetStream
	states   *StateStore
	nats     NATSConfig
	env      string
	switches func() *catalog.Switches
	timeout  time.Duration
	logger   *slog.Logger

	bucket, stream presence
}

// NewEmitter returns an emitter writing states to kv and events to the
// analytics stream of cfg. switches returns the switches in force; timeout
// bounds each device's state write and the wait for a batch's events.
func NewEmitter(js jetstream.JetStream, kv jetstream.KeyValue, cfg NATSConfig, env string, switches func() *catalog.Switches, timeout time.Duration, logger *slog.Logger) *Emitter {
	return &Emitter{
		js: js, states: NewStateStore(js, kv, cfg.AnalyticsStream, timeout), nats: cfg,
		env: env, switches: switches, timeout: timeout, logger: logger,
	}
}

// Publish publishes the items: device state first, with one compare-and-set
// per device for the whole batch, then the events, asynchronously, confirmed
// together. Each event carries the message id as Nats-Msg-Id, so a retry of
// an event the stream already has is dropped by the stream.
func (p *Emitter) Publish(ctx context.Context, items []Item, dryRun bool) []ItemResult {
	results := make([]ItemResult, len(items))
	sw := p.switches()
	started := time.Now()
	diag := p.states.diagnosis()

	// Device state: the newest valid message of each topic per device.
	if !dryRun {
		var wrote bool
		var down *ResourceError
		// One bound for the batch's writes, not one per device: a bucket
		// that does not answer would otherwise hold the batch for as many
		// timeouts as it has devices.
		sctx, cancel := context.WithTimeout(ctx, p.timeout)
		defer cancel()
		// Devices are written side by side: each write is a round trip
		// (two when the entry must be read first), and one after the
		// other they made a batch of many devices wait for every one.
		var mu sync.Mutex
		var g errgroup.Group
		g.SetLimit(stateWriters)
		for _, u := range DeviceUpdates(items) {
			g.Go(func() error {
				_, err := p.states.write(sctx, u)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					err = diag.bucketError(ctx, err)
					for _, i := range u.Items {
						results[i].Err = err
					}
					if re, ok := isDown(err); ok {
						down = re
					}
					return nil
				}
				wrote = true
				return nil
			})
		}
		_ = g.Wait()
		p.observeBucket(started, wrote, down)
	}

	// Events.
	type pending struct {
		i   int
		fut jetstream.PubAckFuture
	}
	var futures []pending
	for i := range items {
		it := &items[i]
		if results[i].Err != nil {
			continue
		}
		org := sw.For(it.OrganizationID)
		var subject string
		if it.Invalid {
			if !org.On(pipeline.SwitchPublishInvalidEvents) {
				results[i].Skipped = string(pipeline.SwitchPublishInvalidEvents) + " is off"
				continue
			}
			subject = InvalidSubject(p.env, it.OrganizationSlug, it.InvalidReason)
		} else {
			results[i].Subjects = append(results[i].Subjects, "$KV."+p.states.Bucket()+"."+it.DeviceUUID)
			if !org.On(pipeline.SwitchPublishAnalytics) {
				results[i].Skipped = string(pipeline.SwitchPublishAnalytics) + " is off"
				continue
			}
			subject = AnalyticsSubject(p.env, it.OrganizationSlug, it.DeviceUUID, it.Topic)
		}
		results[i].Subjects = append(results[i].Subjects, subject)
		if dryRun {
			continue
		}
		// Each event has its own buffer: the future keeps the message
		// until its ack.
		body := appendEvent(make([]byte, 0, 256+len(it.Values)+len(it.Unresolved)), it)
		msg := &nats.Msg{Subject: subject, Data: body}
		if it.Traceparent != "" {
			msg.Header = nats.Header{"traceparent": []string{it.Traceparent}}
		}
		fut, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(it.MessageID.String()))
		if err != nil {
			results[i].Err = diag.streamError(ctx, subject, err)
			continue
		}
		futures = append(futures, pending{i, fut})
	}
	var acked bool
	if len(futures) > 0 {
		wait, cancel := context.WithTimeout(ctx, p.timeout)
		defer cancel()
		for _, f := range futures {
			select {
			case <-f.fut.Ok():
				acked = true
			case err := <-f.fut.Err():
				results[f.i].Err = diag.streamError(ctx, f.fut.Msg().Subject, err)
			case <-wait.Done():
				results[f.i].Err = diag.streamError(ctx, f.fut.Msg().Subject, context.DeadlineExceeded)
			}
		}
	}
	var down *ResourceError
	for i := range results {
		if re, ok := isDown(results[i].Err); ok && re.Kind == KindAnalytics {
			down = re
		}
	}
	if !dryRun {
		p.observeStream(started, acked, down)
	}
	return results
}

// isDown returns err as a [*ResourceError] when it says the resource is
// down.
func isDown(err error) (*ResourceError, bool) {
	var re *ResourceError
	if errors.As(err, &re) && re.Down() {
		return re, true
	}
	return nil, false
}
