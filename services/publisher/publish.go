package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/catalog"
)

// ErrCASExhausted is returned when a device's state kept changing under every
// compare-and-set attempt.
var ErrCASExhausted = errors.New("device state kept changing; compare-and-set attempts exhausted")

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
	Values           map[string]any
	Unresolved       map[string]any
	// Invalid marks a row that failed validation: it is published as an
	// invalid event, if the organization wants those, and never to KV.
	Invalid          bool
	ValidationErrors any
	InvalidReason    string
	Attempt          int
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

// Publisher writes device state to the KV bucket and events to the analytics
// and invalid subjects.
type Publisher struct {
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	env      string
	switches func() *catalog.Switches
	timeout  time.Duration
}

// NewPublisher returns a publisher. switches returns the switches in force.
func NewPublisher(js jetstream.JetStream, kv jetstream.KeyValue, env string, switches func() *catalog.Switches, timeout time.Duration) *Publisher {
	return &Publisher{js: js, kv: kv, env: env, switches: switches, timeout: timeout}
}

// analyticsEvent is the body of an analytics or invalid event.
type analyticsEvent struct {
	MessageID        string         `json:"message_id"`
	Organization     string         `json:"organization"`
	DeviceUUID       string         `json:"device_uuid"`
	DeviceExternalID string         `json:"device_external_id,omitempty"`
	Topic            string         `json:"topic"`
	RecordedAt       time.Time      `json:"recorded_at"`
	Values           map[string]any `json:"values,omitempty"`
	Unresolved       map[string]any `json:"unresolved,omitempty"`
	Errors           any            `json:"errors,omitempty"`
}

// Publish publishes the items: device state first, with one compare-and-set
// per device for the whole batch, then the events, asynchronously, confirmed
// together. Each event carries the message id as Nats-Msg-Id, so a retry of
// an event the stream already has is dropped by the stream.
func (p *Publisher) Publish(ctx context.Context, items []Item, dryRun bool) []ItemResult {
	results := make([]ItemResult, len(items))
	sw := p.switches()

	// Device state: the newest valid message of each topic per device.
	byDevice := map[string][]int{}
	for i := range items {
		if !items[i].Invalid {
			byDevice[items[i].DeviceUUID] = append(byDevice[items[i].DeviceUUID], i)
		}
	}
	if !dryRun {
		devices := make([]string, 0, len(byDevice))
		for d := range byDevice {
			devices = append(devices, d)
		}
		sort.Strings(devices)
		for _, d := range devices {
			idx := byDevice[d]
			if err := p.updateState(ctx, items, idx); err != nil {
				for _, i := range idx {
					results[i].Err = fmt.Errorf("kv %s: %w", d, err)
				}
			}
		}
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
		ev := analyticsEvent{
			MessageID: it.MessageID.String(), Organization: it.OrganizationSlug, DeviceUUID: it.DeviceUUID,
			DeviceExternalID: it.DeviceExternalID, Topic: it.Topic, RecordedAt: it.RecordedAt,
		}
		if it.Invalid {
			if !org.PublishInvalidEvents {
				results[i].Skipped = "publish_invalid_events is off"
				continue
			}
			subject = InvalidSubject(p.env, it.OrganizationSlug, it.InvalidReason)
			ev.Errors = it.ValidationErrors
		} else {
			results[i].Subjects = append(results[i].Subjects, "$KV."+p.kv.Bucket()+"."+it.DeviceUUID)
			if !org.PublishAnalytics {
				results[i].Skipped = "publish_analytics is off"
				continue
			}
			subject = AnalyticsSubject(p.env, it.OrganizationSlug, it.DeviceUUID, it.Topic)
			ev.Values, ev.Unresolved = it.Values, it.Unresolved
		}
		results[i].Subjects = append(results[i].Subjects, subject)
		if dryRun {
			continue
		}
		body, err := json.Marshal(ev)
		if err != nil {
			results[i].Err = fmt.Errorf("encode event: %w", err)
			continue
		}
		fut, err := p.js.PublishAsync(subject, body, jetstream.WithMsgID(it.MessageID.String()))
		if err != nil {
			results[i].Err = fmt.Errorf("publish %s: %w", subject, err)
			continue
		}
		futures = append(futures, pending{i, fut})
	}
	if len(futures) == 0 {
		return results
	}
	wait, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	for _, f := range futures {
		select {
		case <-f.fut.Ok():
		case err := <-f.fut.Err():
			results[f.i].Err = fmt.Errorf("publish %s: %w", f.fut.Msg().Subject, err)
		case <-wait.Done():
			results[f.i].Err = fmt.Errorf("publish %s: no acknowledgement within %s", f.fut.Msg().Subject, p.timeout)
		}
	}
	return results
}

// updateState merges the items of one device into its KV entry with
// compare-and-set on the entry's revision, retrying when another writer got
// there first.
func (p *Publisher) updateState(ctx context.Context, items []Item, idx []int) error {
	first := &items[idx[0]]
	updates := map[string]TopicState{}
	for _, i := range idx {
		it := &items[i]
		u := TopicState{Values: it.Values, MessageID: it.MessageID.String(), RecordedAt: it.RecordedAt.UTC()}
		if cur, ok := updates[it.Topic]; !ok || newer(u, cur) {
			updates[it.Topic] = u
		}
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	for attempt := 0; attempt < 16; attempt++ {
		var (
			state    DeviceState
			revision uint64
		)
		entry, err := p.kv.Get(ctx, first.DeviceUUID)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			revision = entry.Revision()
			if state, err = decodeState(entry.Value()); err != nil {
				// A value that is not ours is replaced rather than blocking
				// the device forever.
				state = DeviceState{}
			}
		}
		state.DeviceUUID, state.Organization = first.DeviceUUID, first.OrganizationSlug
		if !Merge(&state, updates) {
			return nil
		}
		state.UpdatedAt = time.Now().UTC()
		body, err := json.Marshal(state)
		if err != nil {
			return fmt.Errorf("encode state: %w", err)
		}
		if revision == 0 {
			_, err = p.kv.Create(ctx, first.DeviceUUID, body)
		} else {
			_, err = p.kv.Update(ctx, first.DeviceUUID, body, revision)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return err
		}
	}
	return ErrCASExhausted
}
