package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DeviceState is the value kept under a device's uuid in the device-states
// bucket: the latest values of each topic.
type DeviceState struct {
	DeviceUUID   string                `json:"device_uuid"`
	Organization string                `json:"organization"`
	Topics       map[string]TopicState `json:"topics"`
	UpdatedAt    time.Time             `json:"updated_at"`
}

// TopicState is the latest message of one topic.
type TopicState struct {
	Values     json.RawMessage `json:"values"`
	MessageID  string          `json:"message_id"`
	RecordedAt time.Time       `json:"recorded_at"`
}

// Value returns the value of key among the topic's values, as
// encoding/json decodes it (numbers as float64), or nil when there is none.
func (s TopicState) Value(key string) any {
	var m map[string]any
	if json.Unmarshal(s.Values, &m) != nil {
		return nil
	}
	return m[key]
}

// newer reports whether a is newer than b: a later recorded time, or the same
// time and a later message id (time-ordered), so replicas agree on ties.
func newer(a, b TopicState) bool {
	if !a.RecordedAt.Equal(b.RecordedAt) {
		return a.RecordedAt.After(b.RecordedAt)
	}
	return a.MessageID > b.MessageID
}

// Merge folds the updates into the state, keeping for each topic the newest
// message, and reports whether anything changed. An older message never
// overwrites newer state.
func Merge(s *DeviceState, updates map[string]TopicState) bool {
	if s.Topics == nil {
		s.Topics = map[string]TopicState{}
	}
	changed := false
	for topic, u := range updates {
		cur, ok := s.Topics[topic]
		if ok && !newer(u, cur) {
			continue
		}
		s.Topics[topic] = u
		changed = true
	}
	return changed
}

func decodeState(b []byte) (DeviceState, error) {
	var s DeviceState
	err := json.Unmarshal(b, &s)
	return s, err
}

// topicState is what an item contributes to its device's entry.
func (it *Item) topicState() TopicState {
	return TopicState{Values: it.Values, MessageID: it.MessageID.String(), RecordedAt: it.RecordedAt.UTC()}
}

// DeviceUpdate is the newest message of each topic of one device among a
// set of items: what one compare-and-set on the device's entry writes.
type DeviceUpdate struct {
	// Device is the device's uuid, the entry's key.
	Device string
	// Organization is the organization's slug.
	Organization string
	// Topics holds, per topic, the newest of the items' messages.
	Topics map[string]TopicState
	// Items are the positions of the items it was built from.
	Items []int
}

// DeviceUpdates groups the valid items by device, keeping the newest message
// of each topic, in device order. Invalid items are left out: they never
// reach the bucket. The publisher and the rebuild of the bucket both build
// their writes here, so both write the same state for the same rows.
func DeviceUpdates(items []Item) []DeviceUpdate {
	byDevice := map[string]*DeviceUpdate{}
	for i := range items {
		it := &items[i]
		if it.Invalid {
			continue
		}
		u := byDevice[it.DeviceUUID]
		if u == nil {
			u = &DeviceUpdate{Device: it.DeviceUUID, Organization: it.OrganizationSlug, Topics: map[string]TopicState{}}
			byDevice[it.DeviceUUID] = u
		}
		u.Items = append(u.Items, i)
		ts := it.topicState()
		if cur, ok := u.Topics[it.Topic]; !ok || newer(ts, cur) {
			u.Topics[it.Topic] = ts
		}
	}
	out := make([]DeviceUpdate, 0, len(byDevice))
	for _, u := range byDevice {
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

// casAttempts bounds the compare-and-set attempts on one entry.
const casAttempts = 16

// StateStore writes device states to the KV bucket with compare-and-set on
// each entry's revision, so an older message never overwrites newer state,
// whoever wrote it.
type StateStore struct {
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	stream  string
	timeout time.Duration
}

// NewStateStore returns a store writing to kv, each write allowed timeout.
// js is asked, when a write fails, whether the bucket still exists, and
// analyticsStream names the stream events go to, for the same question
// about a failed event.
func NewStateStore(js jetstream.JetStream, kv jetstream.KeyValue, analyticsStream string, timeout time.Duration) *StateStore {
	return &StateStore{js: js, kv: kv, stream: analyticsStream, timeout: timeout}
}

// Bucket is the name of the bucket the store writes to.
func (s *StateStore) Bucket() string { return s.kv.Bucket() }

// diagnosis returns a fresh [diagnosis] for one batch of writes.
func (s *StateStore) diagnosis() *diagnosis {
	return &diagnosis{js: s.js, bucket: s.kv.Bucket(), stream: s.stream, timeout: s.timeout}
}

// Write merges u into the device's entry: it reads the entry, keeps for each
// topic the newer of the entry's message and u's, and writes the result
// with compare-and-set on the revision it read, reading again when another
// writer got there first. It reports whether it wrote; false means the entry
// already held each topic as new or newer. A failure is a [*ResourceError].
func (s *StateStore) Write(ctx context.Context, u DeviceUpdate) (bool, error) {
	wrote, err := s.write(ctx, u)
	if err != nil {
		return false, s.diagnosis().bucketError(ctx, err)
	}
	return wrote, nil
}

// write is [StateStore.Write] with the errors as NATS returned them.
func (s *StateStore) write(ctx context.Context, u DeviceUpdate) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	for range casAttempts {
		var (
			state    DeviceState
			revision uint64
		)
		entry, err := s.kv.Get(ctx, u.Device)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return false, err
		default:
			revision = entry.Revision()
			if state, err = decodeState(entry.Value()); err != nil {
				// A value that is not ours is replaced rather than blocking
				// the device forever.
				state = DeviceState{}
			}
		}
		state.DeviceUUID, state.Organization = u.Device, u.Organization
		if !Merge(&state, u.Topics) {
			return false, nil
		}
		state.UpdatedAt = time.Now().UTC()
		body, err := state.MarshalJSON()
		if err != nil {
			return false, fmt.Errorf("encode state: %w", err)
		}
		if revision == 0 {
			_, err = s.kv.Create(ctx, u.Device, body)
		} else {
			_, err = s.kv.Update(ctx, u.Device, body, revision)
		}
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return false, err
		}
	}
	return false, ErrCASExhausted
}
