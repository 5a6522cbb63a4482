package viewer

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/encoding/protojson"

	analyticsv1 "github.com/telemesh/telemesh/gen/telemesh/analytics/v1"
)

// liveEvent is a telemetry or invalid event as the page gets it.
type liveEvent struct {
	Kind         string         `json:"kind"`
	MessageID    string         `json:"message_id"`
	Organization string         `json:"organization"`
	DeviceUUID   string         `json:"device_uuid"`
	Device       string         `json:"device"`
	Topic        string         `json:"topic"`
	RecordedAt   time.Time      `json:"recorded_at"`
	SeenAt       time.Time      `json:"seen_at"`
	Values       map[string]any `json:"values,omitempty"`
	Derived      []string       `json:"derived,omitempty"`
	Unresolved   map[string]any `json:"unresolved,omitempty"`
	Errors       []liveError    `json:"errors,omitempty"`
	Reason       string         `json:"reason,omitempty"`
	Subject      string         `json:"subject"`
}

// liveError is one validation error of an invalid event, as the page gets
// it.
type liveError struct {
	Parameter string `json:"parameter,omitempty"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	Critical  bool   `json:"critical"`
}

// decodeEvent is how the viewer reads the publisher's events: through the
// generated types of the contract, ignoring fields added to it later.
var decodeEvent = protojson.UnmarshalOptions{DiscardUnknown: true}

// analyticsSubjects are the publisher's subjects the live view follows, as
// the page names them.
func (s *Server) analyticsSubjects() []string {
	env := ">"
	if s.cfg.Env != "" {
		env = s.cfg.Env + ".>"
	}
	return []string{"iot.v1.analytics." + env, "iot.v1.invalid." + env}
}

// subscription is the one subject the viewer subscribes to for both kinds
// of event: one subscription delivers them in the order they were
// published, where two would each have their own order.
func (s *Server) subscription() string {
	if s.cfg.Env != "" {
		return "iot.v1.*." + s.cfg.Env + ".>"
	}
	return "iot.v1.*.>"
}

// pendingMsgs and pendingBytes bound what a NATS subscription may hold for
// the viewer; past them the NATS client drops messages rather than growing.
const (
	pendingMsgs  = 20_000
	pendingBytes = 64 << 20
)

// runAnalytics follows the analytics and invalid-event subjects until ctx
// ends. Core NATS subscriptions are enough: the page shows what happens
// now, and the NATS client resubscribes by itself after a reconnect.
func (s *Server) runAnalytics(ctx context.Context) {
	subj := s.subscription()
	sub, err := s.nc.Subscribe(subj, s.onAnalytics)
	if err != nil {
		// Only a closed connection or a bad subject refuses a subscription.
		s.logger.Error("viewer: subscribe", "subject", subj, "err", err)
		return
	}
	_ = sub.SetPendingLimits(pendingMsgs, pendingBytes)
	<-ctx.Done()
	_ = sub.Unsubscribe()
}

// onAnalytics turns one analytics or invalid event into a live event.
func (s *Server) onAnalytics(m *nats.Msg) {
	if !strings.HasPrefix(m.Subject, "iot.v1.analytics.") && !strings.HasPrefix(m.Subject, "iot.v1.invalid.") {
		return
	}
	out := liveEvent{Kind: kindTelemetry, SeenAt: time.Now().UTC(), Subject: m.Subject}
	if strings.HasPrefix(m.Subject, "iot.v1.invalid.") {
		var in analyticsv1.InvalidEvent
		if err := decodeEvent.Unmarshal(m.Data, &in); err != nil {
			s.logger.Debug("viewer: an invalid event that is not one", "subject", m.Subject, "err", err)
			return
		}
		out.Kind = kindInvalid
		out.MessageID, out.Organization, out.DeviceUUID = in.GetMessageId(), in.GetOrganization(), in.GetDeviceUuid()
		out.Device, out.Topic, out.RecordedAt = in.GetDeviceExternalId(), in.GetTopic(), in.GetRecordedAt().AsTime()
		for _, e := range in.GetErrors() {
			out.Errors = append(out.Errors, liveError{Parameter: e.GetParameter(), Code: e.GetCode(), Message: e.GetMessage(), Critical: e.GetCritical()})
		}
		if parts := strings.Split(m.Subject, "."); len(parts) >= 6 {
			out.Reason = parts[5]
		}
	} else {
		var in analyticsv1.Event
		if err := decodeEvent.Unmarshal(m.Data, &in); err != nil {
			s.logger.Debug("viewer: an analytics event that is not one", "subject", m.Subject, "err", err)
			return
		}
		out.MessageID, out.Organization, out.DeviceUUID = in.GetMessageId(), in.GetOrganization(), in.GetDeviceUuid()
		out.Device, out.Topic, out.RecordedAt = in.GetDeviceExternalId(), in.GetTopic(), in.GetRecordedAt().AsTime()
		if in.GetValues() != nil {
			out.Values = in.GetValues().AsMap()
		}
		if in.GetUnresolved() != nil {
			out.Unresolved = in.GetUnresolved().AsMap()
		}
	}
	out.Derived = s.derivedKeys(out.DeviceUUID, out.Topic)
	if out.Device == "" {
		out.Device = s.externalID(out.DeviceUUID)
	}
	data, err := json.Marshal(out)
	if err != nil {
		return
	}
	s.hub.publish(&event{kind: out.Kind, org: out.Organization, device: out.DeviceUUID, deviceExt: out.Device, topic: out.Topic, data: data})
}

// derivedKeys returns the derived parameters of a device's topic, from the
// catalog, sorted.
func (s *Server) derivedKeys(deviceUUID, topic string) []string {
	snap := s.catalog.Snapshot()
	id, err := uuid.Parse(deviceUUID)
	if snap == nil || err != nil {
		return nil
	}
	d := snap.Devices[id]
	if d == nil {
		return nil
	}
	dt := snap.DeviceTypes[d.DeviceTypeID]
	if dt == nil || dt.Topics[topic] == nil {
		return nil
	}
	var keys []string
	for _, dv := range dt.Topics[topic].Derived {
		keys = append(keys, dv.Key)
	}
	sort.Strings(keys)
	return keys
}

// externalID returns a device's external id from the catalog, or "".
func (s *Server) externalID(deviceUUID string) string {
	snap := s.catalog.Snapshot()
	id, err := uuid.Parse(deviceUUID)
	if snap == nil || err != nil {
		return ""
	}
	if d := snap.Devices[id]; d != nil {
		return d.ExternalID
	}
	return ""
}

// rawEvent is a message of the raw stream as the page gets it.
type rawEvent struct {
	Kind         string    `json:"kind"`
	Subject      string    `json:"subject"`
	Organization string    `json:"organization,omitempty"`
	Device       string    `json:"device,omitempty"`
	DeviceUUID   string    `json:"device_uuid,omitempty"`
	Topic        string    `json:"topic,omitempty"`
	MsgID        string    `json:"msg_id,omitempty"`
	Size         int       `json:"size"`
	Payload      string    `json:"payload"`
	Binary       bool      `json:"binary,omitempty"`
	Truncated    bool      `json:"truncated,omitempty"`
	SeenAt       time.Time `json:"seen_at"`
	// SkippedBefore counts the messages left out, by the rate limit, since
	// the last one sent.
	SkippedBefore uint64 `json:"skipped_before,omitempty"`
	// Known is false when the catalog cannot place the subject (an unknown
	// device or topic): the gateway will halt it.
	Known bool `json:"known"`
}

// rawPreview is how much of a raw payload the page gets.
const rawPreview = 1024

// rawSource subscribes to the captured subjects while at least one page
// wants the raw stream, and not otherwise.
type rawSource struct {
	s       *Server
	changed chan struct{}
	limiter *rate.Limiter

	mu       sync.Mutex
	skipped  uint64
	subjects []string // what is subscribed now, for the page
}

func newRawSource(s *Server) *rawSource {
	return &rawSource{
		s: s, changed: make(chan struct{}, 1),
		limiter: rate.NewLimiter(rate.Limit(s.cfg.RawRate), max(1, int(s.cfg.RawRate))),
	}
}

// demandChanged wakes the loop; it never blocks.
func (r *rawSource) demandChanged() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// currentSubjects returns the subjects the raw stream follows now.
func (r *rawSource) currentSubjects() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.subjects...)
}

// run keeps the raw subscriptions in line with the demand until ctx ends.
// When the subjects cannot be found (no stream yet) it says so to the pages
// and tries again.
func (r *rawSource) run(ctx context.Context) {
	var subs []*nats.Subscription
	unsubscribe := func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		subs = nil
		r.mu.Lock()
		r.subjects = nil
		r.mu.Unlock()
	}
	defer unsubscribe()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.changed:
		case <-retry.C:
		}
		want := r.s.hub.rawDemand() > 0
		switch {
		case want && subs == nil:
			subjects, err := r.subjectsToFollow(ctx)
			if err == nil {
				subs, err = r.subscribe(subjects)
			}
			if err != nil {
				r.s.logger.Warn("viewer: raw stream unavailable; retrying", "err", err)
				r.s.hub.publish(&event{kind: kindNotice, data: noticeJSON("raw", "raw stream unavailable: "+err.Error()+"; retrying")})
				retry.Reset(5 * time.Second)
				continue
			}
			r.mu.Lock()
			r.subjects = subjects
			r.mu.Unlock()
			r.s.logger.Info("viewer: raw stream on", "subjects", subjects)
		case !want && subs != nil:
			unsubscribe()
			r.s.logger.Info("viewer: raw stream off")
		}
	}
}

// subjectsToFollow returns the configured raw subjects, else the stream's.
func (r *rawSource) subjectsToFollow(ctx context.Context) ([]string, error) {
	if len(r.s.cfg.RawSubjects) > 0 {
		return r.s.cfg.RawSubjects, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := r.s.js.Stream(ctx, r.s.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", r.s.cfg.Stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", r.s.cfg.Stream, err)
	}
	if len(info.Config.Subjects) == 0 {
		return nil, fmt.Errorf("stream %s captures no subjects", r.s.cfg.Stream)
	}
	return info.Config.Subjects, nil
}

func (r *rawSource) subscribe(subjects []string) ([]*nats.Subscription, error) {
	var subs []*nats.Subscription
	for _, subj := range subjects {
		sub, err := r.s.nc.Subscribe(subj, r.onRaw)
		if err != nil {
			for _, s := range subs {
				_ = s.Unsubscribe()
			}
			return nil, fmt.Errorf("subscribe %s: %w", subj, err)
		}
		_ = sub.SetPendingLimits(pendingMsgs, pendingBytes)
		subs = append(subs, sub)
	}
	return subs, nil
}

// onRaw sends one captured message to the pages that want the raw stream,
// within the rate limit.
func (r *rawSource) onRaw(m *nats.Msg) {
	// System and internal subjects are not device telemetry.
	if strings.HasPrefix(m.Subject, "$") || strings.HasPrefix(m.Subject, "_") {
		return
	}
	if !r.limiter.Allow() {
		r.mu.Lock()
		r.skipped++
		r.mu.Unlock()
		r.s.metrics.skipped.Inc()
		return
	}
	r.mu.Lock()
	skipped := r.skipped
	r.skipped = 0
	r.mu.Unlock()

	out := rawEvent{Kind: kindRaw, Subject: m.Subject, Size: len(m.Data), SeenAt: time.Now().UTC(), SkippedBefore: skipped}
	if m.Header != nil {
		out.MsgID = m.Header.Get(jetstream.MsgIDHeader)
	}
	data := m.Data
	if len(data) > rawPreview {
		data, out.Truncated = data[:rawPreview], true
	}
	if out.Truncated {
		data = trimPartialRune(data)
	}
	if utf8.Valid(data) {
		out.Payload = string(data)
	} else {
		out.Binary = true
		out.Payload = fmt.Sprintf("%x", data[:min(len(data), 64)])
	}
	if parts := strings.Split(m.Subject, "."); len(parts) == 3 {
		out.Device, out.Topic = parts[1], parts[2]
	}
	if snap := r.s.catalog.Snapshot(); snap != nil {
		if res, err := snap.Resolve(m.Subject); err == nil {
			out.Known = true
			out.DeviceUUID = res.Device.ID.String()
			if res.Organization != nil {
				out.Organization = res.Organization.Slug
			}
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return
	}
	r.s.hub.publish(&event{kind: kindRaw, org: out.Organization, device: out.DeviceUUID, deviceExt: out.Device, topic: out.Topic, data: b})
}

// trimPartialRune drops an incomplete UTF-8 sequence a truncation left at
// the end.
func trimPartialRune(b []byte) []byte {
	for i := 0; i < utf8.UTFMax && len(b) > 0; i++ {
		if utf8.Valid(b) {
			return b
		}
		b = b[:len(b)-1]
	}
	return b
}

// deviceState reads a device-states entry through the generated
// [analyticsv1.DeviceState] and returns it as the page gets it: the same
// JSON, in protojson's form.
func deviceState(value []byte) (json.RawMessage, error) {
	var st analyticsv1.DeviceState
	if err := decodeEvent.Unmarshal(value, &st); err != nil {
		return nil, err
	}
	return protojson.Marshal(&st)
}
