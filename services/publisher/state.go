package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
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

	// mu guards known: the entries this store wrote last, so that the next
	// write of a device skips reading its entry. The compare-and-set on the
	// remembered revision still refuses a write when anyone else wrote the
	// entry since, and the store then reads it again.
	mu    sync.Mutex
	known map[string]knownEntry
}

// knownEntry is an entry as this store last wrote it.
type knownEntry struct {
	state    DeviceState
	revision uint64
	at       time.Time
}

const (
	// knownLimit bounds the entries a store remembers: beyond it, it
	// forgets them all and reads again, a cost paid once per limit.
	knownLimit = 10_000
	// knownFor is how long a remembered entry is used. An entry that was
	// deleted, or a bucket made again, is read afresh after it, so a state
	// the store remembers cannot keep a device out of a new bucket for
	// longer.
	knownFor = 30 * time.Second
)

// remembered returns a copy of the device's entry as this store last
// wrote it, if it is recent.
func (s *StateStore) remembered(device string) (DeviceState, uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.known[device]
	if !ok || time.Since(e.at) > knownFor {
		return DeviceState{}, 0, false
	}
	st := e.state
	st.Topics = make(map[string]TopicState, len(e.state.Topics))
	for k, v := range e.state.Topics {
		st.Topics[k] = v
	}
	return st, e.revision, true
}

// remember records what the store wrote, or, with revision 0, forgets it.
func (s *StateStore) remember(device string, st DeviceState, revision uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if revision == 0 {
		delete(s.known, device)
		return
	}
	if s.known == nil || len(s.known) >= knownLimit {
		s.known = make(map[string]knownEntry)
	}
	if cur, ok := s.known[device]; ok && cur.revision > revision {
		return
	}
	s.known[device] = knownEntry{state: st, revision: revision, at: time.Now()}
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
	state, revision, known := s.remembered(u.Device)
	for range casAttempts {
		if !known {
			state, revision = DeviceState{}, 0
			entry, err := s.kv.Get(ctx, u.Device)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
			case err != nil:
				return false, err
			default:
				revision = entry.Revision()
				if state, err = decodeState(entry.Value()); err != nil {
					// A value that is not ours is replaced rather than
					// blocking the device forever.
					state = DeviceState{}
				}
			}
		}
		state.DeviceUUID, state.Organization = u.Device, u.Organization
		if !Merge(&state, u.Topics) {
			// Every topic is as new or newer in the entry: in the one just
			// read, or in the one this store wrote, which nothing but a
			// newer message replaces.
			return false, nil
		}
		state.UpdatedAt = time.Now().UTC()
		body, err := state.MarshalJSON()
		if err != nil {
			return false, fmt.Errorf("encode state: %w", err)
		}
		var written uint64
		if revision == 0 {
			written, err = s.kv.Create(ctx, u.Device, body)
		} else {
			written, err = s.kv.Update(ctx, u.Device, body, revision)
		}
		if err == nil {
			s.remember(u.Device, state, written)
			return true, nil
		}
		s.remember(u.Device, DeviceState{}, 0)
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return false, err
		}
		// Someone else wrote the entry since: read it again.
		known = false
	}
	return false, ErrCASExhausted
}
