// Package simulate publishes telemetry for a fleet of devices to NATS
// JetStream, the way the demo fleet's devices would, with a chosen share of
// faulty messages mixed in, so that every path through the pipeline (valid,
// invalid, inactive, duplicate, unknown topic, malformed JSON, missing
// derivation inputs) can be exercised on demand and at a chosen rate.
//
// # Message ids and duplicates
//
// With message ids on, every original message carries the same id twice: as
// the Nats-Msg-Id header and as the payload's top-level "message_id". A
// duplicate re-sends an earlier valid message byte for byte. Every other
// duplicate keeps the Nats-Msg-Id header; JetStream itself drops those when
// the original is still inside the stream's duplicate window (two minutes by
// default), so they never reach telemesh and only show up as acks marked
// duplicate ([Stats.DroppedDuplicates]). The other duplicates carry only the
// payload message_id, which JetStream cannot see, so they land in the stream
// and exercise telemesh's own dedupe. With message ids off there is no id
// anywhere, and a duplicate is an identical re-send that telemesh must treat
// as a new message.
package simulate

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/telemesh/telemesh/internal/demo"
)

// Device kinds the simulator can make payloads for; they are the demo
// fleet's device types.
const (
	Thermostat  = "thermostat"
	EnergyMeter = "energy-meter"
	AirQuality  = "air-quality"
)

// ErrConfig is the cause of every error [Config.Validate] returns.
var ErrConfig = errors.New("invalid simulation config")

// Device is one simulated device.
type Device struct {
	ExternalID string
	// Subject is where its telemetry goes: <base>.<external id>.<suffix>.
	Subject string
	// Kind is its device type: [Thermostat], [EnergyMeter] or [AirQuality].
	Kind string
	// Active mirrors the catalog's is_active; only inactive devices receive
	// the inactive fault and only active ones everything else, so each
	// message means what its kind says.
	Active bool
}

// DemoDevices returns the first n devices of the demo fleet; n outside
// 1..len(demo.Devices) returns them all.
func DemoDevices(n int) []Device {
	if n <= 0 || n > len(demo.Devices) {
		n = len(demo.Devices)
	}
	out := make([]Device, 0, n)
	for _, d := range demo.Devices[:n] {
		out = append(out, Device{ExternalID: d.ExternalID, Subject: d.Subject, Kind: d.Kind, Active: d.Active})
	}
	return out
}

// Faults are the shares of faulty messages, each a percentage from 0 to 100
// of all messages; they add up to at most 100 and the rest are valid.
type Faults struct {
	// Invalid drops a required critical parameter or puts it out of range.
	Invalid float64
	// Inactive publishes for a device whose Active is false.
	Inactive float64
	// DuplicateIDs re-sends an earlier valid message; see the package
	// documentation for which copies JetStream drops.
	DuplicateIDs float64
	// UnknownTopic publishes on the device's subject with the suffix
	// replaced by "nosuchtopic".
	UnknownTopic float64
	// MalformedJSON truncates the body, so it is not JSON at all.
	MalformedJSON float64
	// MissingInputs drops the optional parameter a derived value needs
	// (thermostat humidity, energy-meter current_a).
	MissingInputs float64
}

// Sum returns the total share of faulty messages.
func (f Faults) Sum() float64 {
	return f.Invalid + f.Inactive + f.DuplicateIDs + f.UnknownTopic + f.MalformedJSON + f.MissingInputs
}

// shares lists the faults in the order a draw walks them; changing the
// order changes which message a seed produces.
func (f Faults) shares() []share {
	return []share{
		{Invalid, f.Invalid},
		{Inactive, f.Inactive},
		{Duplicate, f.DuplicateIDs},
		{UnknownTopic, f.UnknownTopic},
		{MalformedJSON, f.MalformedJSON},
		{MissingInputs, f.MissingInputs},
	}
}

type share struct {
	kind MessageKind
	pct  float64
}

// Config says what to publish, how fast and for how long.
type Config struct {
	Devices []Device
	// Rate is messages per second over all devices; 0 publishes as fast as
	// acks come back.
	Rate float64
	// Duration stops the run after this long; 0 is no limit.
	Duration time.Duration
	// Count stops the run after this many messages; 0 is no limit. At least
	// one of Duration, Count and the context must end the run.
	Count int
	// MessageIDs puts a Nats-Msg-Id header and a payload message_id on each
	// message; off, no id is sent anywhere.
	MessageIDs bool
	Faults     Faults
	// Seed makes the sequence of kinds, devices and values repeatable.
	Seed int64
	// RunID prefixes every message id. Empty picks a fresh one, because two
	// runs with the same seed would otherwise reuse ids and the second would
	// be deduplicated away.
	RunID string
}

// Validate reports the first setting Run cannot use; its error wraps
// [ErrConfig].
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if len(c.Devices) == 0 {
		return bad("no devices")
	}
	active := 0
	for _, d := range c.Devices {
		if d.Subject == "" {
			return bad("device %q has no subject", d.ExternalID)
		}
		switch d.Kind {
		case Thermostat, EnergyMeter, AirQuality:
		default:
			return bad("device %q has kind %q; want %s, %s or %s", d.ExternalID, d.Kind, Thermostat, EnergyMeter, AirQuality)
		}
		if d.Active {
			active++
		}
	}
	if !finite(c.Rate) || c.Rate < 0 {
		return bad("rate %v must be 0 or more", c.Rate)
	}
	if c.Duration < 0 {
		return bad("duration %v must be 0 or more", c.Duration)
	}
	if c.Count < 0 {
		return bad("count %d must be 0 or more", c.Count)
	}
	for _, s := range c.Faults.shares() {
		if !finite(s.pct) || s.pct < 0 || s.pct > 100 {
			return bad("%s share %v%% is outside 0..100", s.kind, s.pct)
		}
	}
	if sum := c.Faults.Sum(); sum > 100+1e-9 {
		return bad("fault shares add up to %v%%, more than 100", sum)
	}
	// Everything but the inactive fault needs an active device to mean
	// what it says.
	if active == 0 && c.Faults.Inactive < 100 {
		return bad("none of the devices is active")
	}
	return nil
}

// Notes says which faults the fleet cannot produce; Run sends a valid
// message in their place and counts them in [Stats.Skipped].
func (c Config) Notes() []string {
	var notes []string
	var inactive, derivable bool
	for _, d := range c.Devices {
		inactive = inactive || !d.Active
		derivable = derivable || (d.Active && optionalInput(d.Kind) != "")
	}
	if c.Faults.Inactive > 0 && !inactive {
		notes = append(notes, fmt.Sprintf("none of the %d devices is inactive: inactive messages are skipped and sent valid instead", len(c.Devices)))
	}
	if c.Faults.MissingInputs > 0 && !derivable {
		notes = append(notes, "no active thermostat or energy meter: missing-inputs messages are skipped and sent valid instead")
	}
	return notes
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// Stats counts what a run did so far.
type Stats struct {
	// Sent counts the messages handed to JetStream, by kind; a publish that
	// failed at once is counted here and in Failed.
	Sent Counts
	// Skipped counts faults the fleet could not produce (no inactive device,
	// no device with a derivation input, nothing to duplicate yet); a valid
	// message was sent in each one's place.
	Skipped Counts
	// HeaderDuplicates and PayloadOnlyDuplicates split Sent[Duplicate] by
	// whether the copy carried the Nats-Msg-Id header; both are 0 when
	// message ids are off.
	HeaderDuplicates, PayloadOnlyDuplicates int
	// Acked counts messages JetStream confirmed, DroppedDuplicates among
	// them; Failed counts publish errors, negative acks and acks that did
	// not come within the ack timeout.
	Acked, Failed int
	// DroppedDuplicates counts acks JetStream marked duplicate: header
	// duplicates inside the stream's window, which it did not store.
	DroppedDuplicates int
	// LastError describes the most recent failure.
	LastError string
	// Target is Config.Count, so that a progress display knows the end.
	Target int
	// Rate is messages sent per second over the last two seconds while the
	// run goes on, and over the whole run in the Stats Run returns.
	Rate    float64
	Elapsed time.Duration
	// Interrupted is true when the context ended the run before Count or
	// Duration did.
	Interrupted bool
}

// Total is the number of messages sent.
func (s Stats) Total() int { return s.Sent.Total() }

// Pending is the number of messages whose ack has not come back yet.
func (s Stats) Pending() int { return s.Total() - s.Acked - s.Failed }

// Stored is the number of messages JetStream kept: every ack except the
// duplicates it dropped.
func (s Stats) Stored() int { return s.Acked - s.DroppedDuplicates }

// Counts holds one number per [MessageKind].
type Counts [numKinds]int

// Total adds up every kind.
func (c Counts) Total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

const (
	// maxInFlight bounds unacknowledged publishes; below the JetStream
	// client's default of 4000 so that a run as fast as possible waits for
	// acks instead of failing with too many stalled messages.
	maxInFlight = 1024
	// ackWait is how long a publish may stay unacknowledged before it
	// counts as failed; it also bounds how long Run waits after the last
	// publish, including after Ctrl-C.
	ackWait = 10 * time.Second
	// progressEvery is how often Run reports progress; displays throttle
	// further if they like.
	progressEvery = 250 * time.Millisecond
	// rateWindow is the span the live rate is measured over.
	rateWindow = 2 * time.Second
)

// Run publishes cfg's messages to js until Count messages are sent,
// Duration has passed or ctx is done, whichever comes first, then waits for
// the outstanding acks. Publishes never wait for their own ack: a collector
// confirms them as they come back, in bulk, up to 1024 in flight. progress,
// if not nil, is called every 250ms and once at the end, never concurrently.
//
// The end of ctx is a normal way to stop (Stats.Interrupted says so); Run
// returns an error only when cfg is invalid, when no stream captures a
// device's subject, or when the connection is closed under it. The Stats
// are valid in every case.
func Run(ctx context.Context, js jetstream.JetStream, cfg Config, progress func(Stats)) (Stats, error) {
	if err := cfg.Validate(); err != nil {
		return Stats{}, err
	}
	if cfg.Count == 0 && cfg.Duration == 0 && ctx.Done() == nil {
		return Stats{}, fmt.Errorf("%w: nothing ends the run: set Count or Duration, or pass a context that ends", ErrConfig)
	}
	if err := checkStreams(ctx, js, cfg.Devices); err != nil {
		return Stats{}, err
	}
	if cfg.RunID == "" {
		cfg.RunID = newRunID()
	}
	g := newGenerator(cfg, time.Now)

	start := time.Now()
	t := &tally{s: Stats{Target: cfg.Count}}
	runCtx, cancel := ctx, context.CancelFunc(func() {})
	if cfg.Duration > 0 {
		runCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
	}
	defer cancel()

	sem := make(chan struct{}, maxInFlight)
	pending := make(chan pendingAck, maxInFlight)
	collected, abandon := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(collected)
		collect(pending, sem, abandon, t)
	}()

	stopProgress := func() {}
	if progress != nil {
		stopProgress = reportEvery(progress, t, start)
	}

	var lim *rate.Limiter
	if cfg.Rate > 0 {
		// A burst of a fiftieth of a second keeps high rates accurate
		// despite timer granularity without bunching low ones.
		lim = rate.NewLimiter(rate.Limit(cfg.Rate), max(1, int(cfg.Rate/50)))
	}

	var runErr error
	for sent := 0; cfg.Count == 0 || sent < cfg.Count; sent++ {
		if lim != nil {
			if lim.Wait(runCtx) != nil {
				break
			}
		}
		if runCtx.Err() != nil {
			break
		}
		m, err := g.next()
		if err != nil {
			runErr = err
			break
		}
		select {
		case sem <- struct{}{}:
		case <-runCtx.Done():
		}
		if runCtx.Err() != nil {
			break
		}
		fut, err := publish(runCtx, js, m)
		if err != nil && runCtx.Err() != nil && errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			// Stopped while waiting for room: this message was never sent.
			<-sem
			break
		}
		t.sent(m, err)
		if err != nil {
			<-sem
			if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionDraining) {
				runErr = fmt.Errorf("simulate: publish to %s: %w", m.subject, err)
				// No ack can come back on a closed connection.
				close(abandon)
				break
			}
			continue
		}
		pending <- pendingAck{fut: fut, deadline: time.Now().Add(ackWait)}
	}
	close(pending)
	<-collected
	stopProgress()

	s := t.snapshot()
	s.Elapsed = time.Since(start)
	if secs := s.Elapsed.Seconds(); secs > 0 {
		s.Rate = float64(s.Total()) / secs
	}
	s.Interrupted = ctx.Err() != nil
	if progress != nil {
		progress(s)
	}
	return s, runErr
}

// checkStreams fails fast when nothing would store the messages, rather
// than after a run of failed acks.
func checkStreams(ctx context.Context, js jetstream.JetStream, devices []Device) error {
	seen := map[string]bool{}
	for _, d := range devices {
		if seen[d.Subject] {
			continue
		}
		seen[d.Subject] = true
		if _, err := js.StreamNameBySubject(ctx, d.Subject); err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return fmt.Errorf("simulate: no JetStream stream captures %s (start telemesh, or create a stream on %v): %w", d.Subject, demo.Subjects, err)
			}
			return fmt.Errorf("simulate: find the stream for %s: %w", d.Subject, err)
		}
	}
	return nil
}

// publish hands m to JetStream without waiting for its ack.
func publish(ctx context.Context, js jetstream.JetStream, m message) (jetstream.PubAckFuture, error) {
	msg := nats.NewMsg(m.subject)
	msg.Data = m.data
	var opts []jetstream.PublishOpt
	if m.msgID != "" {
		opts = append(opts, jetstream.WithMsgID(m.msgID))
	}
	for {
		fut, err := js.PublishMsgAsync(msg, opts...)
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return fut, err
		}
		// The JetStream context may be shared or allow fewer in flight
		// than maxInFlight: waiting for room is not a failure.
		if ctx.Err() != nil {
			return nil, err
		}
	}
}

type pendingAck struct {
	fut      jetstream.PubAckFuture
	deadline time.Time
}

// errNoAck stands for an ack that never came: the client resolves nothing
// when the connection closes.
var errNoAck = errors.New("no ack")

// collect waits for each ack in publish order; deadlines grow in the same
// order, so waiting on one never holds back a later one past its own. Once
// abandon is closed, what is still pending fails at once.
func collect(pending <-chan pendingAck, sem <-chan struct{}, abandon <-chan struct{}, t *tally) {
	for p := range pending {
		ack, err := awaitAck(p, abandon)
		if err != nil {
			t.failed(fmt.Errorf("ack for %s: %w", p.fut.Msg().Subject, err))
		} else {
			t.acked(ack.Duplicate)
		}
		<-sem
	}
}

func awaitAck(p pendingAck, abandon <-chan struct{}) (*jetstream.PubAck, error) {
	// An ack already in hand counts even when the run is being abandoned.
	select {
	case ack := <-p.fut.Ok():
		return ack, nil
	case err := <-p.fut.Err():
		return nil, err
	default:
	}
	timer := time.NewTimer(time.Until(p.deadline))
	defer timer.Stop()
	select {
	case ack := <-p.fut.Ok():
		return ack, nil
	case err := <-p.fut.Err():
		return nil, err
	case <-abandon:
		return nil, nats.ErrConnectionClosed
	case <-timer.C:
		return nil, fmt.Errorf("%w within %s", errNoAck, ackWait)
	}
}

// reportEvery calls progress on a ticker until the returned stop is called;
// stop returns only once progress will not be called again.
func reportEvery(progress func(Stats), t *tally, start time.Time) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(progressEvery)
		defer tick.Stop()
		// Starting from zero at the start gives the first report a rate.
		m := rateMeter{samples: []sample{{at: start}}}
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				s := t.snapshot()
				s.Elapsed = now.Sub(start)
				s.Rate = m.add(now, s.Total())
				progress(s)
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

// rateMeter turns samples of a running total into a rate over rateWindow.
type rateMeter struct {
	samples []sample
}

type sample struct {
	at    time.Time
	total int
}

func (m *rateMeter) add(at time.Time, total int) float64 {
	m.samples = append(m.samples, sample{at, total})
	for len(m.samples) > 2 && at.Sub(m.samples[1].at) >= rateWindow {
		m.samples = m.samples[1:]
	}
	first := m.samples[0]
	if d := at.Sub(first.at).Seconds(); d > 0 {
		return float64(total-first.total) / d
	}
	return 0
}

// tally is Stats shared between the publishing loop and the ack collector.
type tally struct {
	mu sync.Mutex
	s  Stats
}

func (t *tally) sent(m message, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.Sent[m.kind]++
	if m.skipped != noKind {
		t.s.Skipped[m.skipped]++
	}
	if m.kind == Duplicate && m.idsOn {
		if m.msgID != "" {
			t.s.HeaderDuplicates++
		} else {
			t.s.PayloadOnlyDuplicates++
		}
	}
	if err != nil {
		t.s.Failed++
		t.s.LastError = fmt.Sprintf("publish to %s: %v", m.subject, err)
	}
}

func (t *tally) acked(duplicate bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.Acked++
	if duplicate {
		t.s.DroppedDuplicates++
	}
}

func (t *tally) failed(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.Failed++
	t.s.LastError = err.Error()
}

func (t *tally) snapshot() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.s
}
