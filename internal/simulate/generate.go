package simulate

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"strings"
	"time"
)

// MessageKind says what a simulated message is meant to exercise.
type MessageKind int

// The kinds of message, in the order summaries list them.
const (
	Valid MessageKind = iota
	Invalid
	Inactive
	Duplicate
	UnknownTopic
	MalformedJSON
	MissingInputs
	numKinds

	// noKind marks a message that replaced no skipped fault.
	noKind MessageKind = -1
)

// Kinds returns every kind in the order summaries list them.
func Kinds() []MessageKind {
	ks := make([]MessageKind, 0, numKinds)
	for k := Valid; k < numKinds; k++ {
		ks = append(ks, k)
	}
	return ks
}

// String returns the kind's name as Stats and summaries show it.
func (k MessageKind) String() string {
	switch k {
	case Valid:
		return "valid"
	case Invalid:
		return "invalid"
	case Inactive:
		return "inactive"
	case Duplicate:
		return "duplicate"
	case UnknownTopic:
		return "unknown_topic"
	case MalformedJSON:
		return "malformed_json"
	case MissingInputs:
		return "missing_inputs"
	}
	return fmt.Sprintf("MessageKind(%d)", int(k))
}

// unknownSuffix is a topic no device type defines.
const unknownSuffix = "nosuchtopic"

// recordedAtLayout is RFC 3339 with milliseconds, as devices usually send.
const recordedAtLayout = "2006-01-02T15:04:05.000Z07:00"

// recentValid is how many recent valid messages a duplicate may copy; few
// enough that a copy normally falls inside JetStream's duplicate window.
const recentValid = 64

// message is one publish: the subject, the exact bytes and the header id.
type message struct {
	kind    MessageKind
	subject string
	data    []byte
	// msgID is the Nats-Msg-Id header; empty sends no header.
	msgID string
	// idsOn tells a payload-only duplicate from a run without ids.
	idsOn bool
	// skipped is the fault this valid message stands in for, or noKind.
	skipped MessageKind
}

// generator makes the run's messages; everything it draws comes from one
// seeded source, so a seed always yields the same messages apart from the
// run id and the clock.
type generator struct {
	rng    *mrand.Rand
	faults []share
	ids    bool
	runID  string
	now    func() time.Time

	// active receive every kind but inactive; derivable are the active ones
	// with an optional derivation input to drop.
	active, inactive, derivable []Device

	seq        int
	recent     []message
	recentNext int
	duplicates int
}

func newGenerator(cfg Config, now func() time.Time) *generator {
	g := &generator{
		// PCG's output is fixed by its specification, so a seed means the
		// same messages on every Go version.
		rng:    mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0x7e1e3e5)),
		faults: cfg.Faults.shares(),
		ids:    cfg.MessageIDs,
		runID:  cfg.RunID,
		now:    now,
	}
	for _, d := range cfg.Devices {
		switch {
		case !d.Active:
			g.inactive = append(g.inactive, d)
		case optionalInput(d.Kind) != "":
			g.derivable = append(g.derivable, d)
			g.active = append(g.active, d)
		default:
			g.active = append(g.active, d)
		}
	}
	return g
}

// newRunID returns a short random prefix for message ids.
func newRunID() string {
	return "sim-" + strings.ToLower(rand.Text()[:10])
}

// pick draws the kind of the next message from the fault shares.
func (g *generator) pick() MessageKind {
	x := g.rng.Float64() * 100
	for _, s := range g.faults {
		if x < s.pct {
			return s.kind
		}
		x -= s.pct
	}
	return Valid
}

// next returns the next message to publish.
func (g *generator) next() (message, error) {
	kind := g.pick()
	skipped := noKind
	if (kind == Inactive && len(g.inactive) == 0) ||
		(kind == MissingInputs && len(g.derivable) == 0) ||
		(kind == Duplicate && len(g.recent) == 0) {
		skipped, kind = kind, Valid
	}
	if kind == Valid && len(g.active) == 0 {
		// Only possible with every share on inactive, which Validate allows
		// only when an inactive device exists.
		kind = Inactive
	}
	var m message
	if kind == Duplicate {
		m = g.duplicate()
	} else {
		var err error
		if m, err = g.original(kind); err != nil {
			return message{}, err
		}
	}
	m.skipped = skipped
	return m, nil
}

// original makes a new message of kind for a device fit for it.
func (g *generator) original(kind MessageKind) (message, error) {
	pool := g.active
	switch kind {
	case Inactive:
		pool = g.inactive
	case MissingInputs:
		pool = g.derivable
	}
	d := pool[g.rng.IntN(len(pool))]

	p := g.values(d.Kind)
	switch kind {
	case Invalid:
		g.breakCritical(d.Kind, p)
	case MissingInputs:
		delete(p, optionalInput(d.Kind))
	}
	p["recorded_at"] = g.now().UTC().Format(recordedAtLayout)
	g.seq++
	m := message{kind: kind, subject: d.Subject, idsOn: g.ids, skipped: noKind}
	if g.ids {
		m.msgID = fmt.Sprintf("%s-%d", g.runID, g.seq)
		p["message_id"] = m.msgID
	}
	data, err := json.Marshal(p)
	if err != nil {
		return message{}, fmt.Errorf("simulate: encode %s payload: %w", d.Kind, err)
	}
	m.data = data

	switch kind {
	case UnknownTopic:
		m.subject = withSuffix(d.Subject, unknownSuffix)
	case MalformedJSON:
		// Any proper prefix of an object lacks its closing brace, so it
		// never parses; keeping at least "{" makes it look like JSON.
		m.data = data[:1+g.rng.IntN(len(data)-1)]
	case Valid:
		g.remember(m)
	}
	return m, nil
}

// remember keeps m as a candidate for later duplicates.
func (g *generator) remember(m message) {
	if len(g.recent) < recentValid {
		g.recent = append(g.recent, m)
		return
	}
	g.recent[g.recentNext] = m
	g.recentNext = (g.recentNext + 1) % recentValid
}

// duplicate re-sends a recent valid message. Every second copy drops the
// header, because JetStream drops header duplicates inside its window and
// telemesh's own dedupe would otherwise never see one.
func (g *generator) duplicate() message {
	m := g.recent[g.rng.IntN(len(g.recent))]
	m.kind = Duplicate
	g.duplicates++
	if g.duplicates%2 == 0 {
		m.msgID = ""
	}
	return m
}

// values returns a valid payload for a device kind, within the demo
// parameters' rules and with every optional parameter present.
func (g *generator) values(kind string) map[string]any {
	r := g.rng
	switch kind {
	case Thermostat:
		return map[string]any{
			"temp_c":   round(15+r.Float64()*13, 1),
			"humidity": round(30+r.Float64()*30, 1),
			"mode":     []string{"heat", "cool", "off"}[r.IntN(3)],
		}
	case EnergyMeter:
		v := round(225+r.Float64()*10, 1)
		a := round(0.5+r.Float64()*19.5, 2)
		pf := 0.85 + r.Float64()*0.14
		return map[string]any{
			"voltage_v": v,
			"current_a": a,
			"power_w":   round(v*a*pf, 1),
		}
	default: // AirQuality; Validate admits no other kind.
		return map[string]any{
			"pm25": round(2+r.Float64()*58, 1),
			"co2":  400 + r.IntN(1101),
			"meta": map[string]any{"firmware": []string{"v1.4", "v1.5", "v2.0"}[r.IntN(3)]},
		}
	}
}

// breakCritical makes the required critical parameter of a kind fail
// validation: half the time it is missing, else out of its range.
func (g *generator) breakCritical(kind string, p map[string]any) {
	key := criticalParam(kind)
	if g.rng.IntN(2) == 0 {
		delete(p, key)
		return
	}
	r := g.rng
	switch kind {
	case Thermostat: // -50..150
		if r.IntN(2) == 0 {
			p[key] = round(151+r.Float64()*100, 1)
		} else {
			p[key] = round(-51-r.Float64()*50, 1)
		}
	case EnergyMeter: // min 0
		p[key] = round(-1-r.Float64()*500, 1)
	default: // AirQuality pm25 0..1000
		if r.IntN(2) == 0 {
			p[key] = round(1001+r.Float64()*500, 1)
		} else {
			p[key] = round(-1-r.Float64()*10, 1)
		}
	}
}

// criticalParam is the required critical parameter of a device kind.
func criticalParam(kind string) string {
	switch kind {
	case Thermostat:
		return "temp_c"
	case EnergyMeter:
		return "power_w"
	default:
		return "pm25"
	}
}

// optionalInput is the optional parameter a derived value of the kind
// depends on, or "" when no derived value has one (air quality derives
// only from the critical pm25).
func optionalInput(kind string) string {
	switch kind {
	case Thermostat:
		return "humidity" // feels_like_f
	case EnergyMeter:
		return "current_a" // apparent_power_va, then power_factor
	}
	return ""
}

// withSuffix replaces the last token of a subject.
func withSuffix(subject, suffix string) string {
	if i := strings.LastIndexByte(subject, '.'); i >= 0 {
		return subject[:i+1] + suffix
	}
	return subject + "." + suffix
}

func round(v float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(v*p) / p
}
