// Package stagelog records what a stage did to each message in
// ingestion_stage_logs, one round trip per batch.
package stagelog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/bound"
	"github.com/telemesh/telemesh/internal/pg"
)

// Mode says which entries are written.
type Mode string

// The modes of the system telemesh replaces.
const (
	// ModeAll writes every entry.
	ModeAll Mode = "all"
	// ModeSampled writes every failure and a deterministic fraction of the
	// rest, chosen by the dedupe key so a message is logged at every stage or
	// at none.
	ModeSampled Mode = "sampled"
	// ModeFailures writes only entries whose status is not completed.
	ModeFailures Mode = "failures"
)

// Stage-log statuses. Only completed counts as success for the failures mode.
const (
	// StatusCompleted is a stage that handled the message normally.
	StatusCompleted = "completed"
	// StatusHalted is a stage that stopped the message (validation errors,
	// an inactive device, an unknown topic); the reasons are in errors.
	StatusHalted = "halted"
	// StatusDuplicate is a message whose original already reached persist.
	StatusDuplicate = "duplicate"
	// StatusUnresolved is a derive stage that left values unresolved.
	StatusUnresolved = "unresolved"
	// StatusFailed is a stage that failed (a publish that did not happen).
	StatusFailed = "failed"
	// StatusParked is a message held by its organization's switch.
	StatusParked = "parked"
)

// ErrMode is returned by [New] for an unknown mode or a rate outside 0..1.
var ErrMode = errors.New("unknown stage-log mode")

// Entry is one row of ingestion_stage_logs.
type Entry struct {
	MessageID uuid.UUID
	DedupeKey string
	// Stage is ingress, validate, mutate, derive, persist or publish.
	Stage string
	// Status is completed for normal handling; anything else counts as a
	// failure for the failures mode.
	Status   string
	Duration time.Duration
	Attempt  int
	// Input and Output are snapshots; they are kept only for entries that
	// are not completed, where an operator needs them to explain the message.
	// A map's "payload" member is the message's payload: beyond the
	// writer's payload limit only its size is written. Each snapshot, the
	// change set and the errors are bounded by the writer's snapshot limit
	// (see [Limits]).
	Input  any
	Output any
	// ChangeSet says what the stage changed (mutated or derived values).
	ChangeSet any
	// Errors holds the reasons of a failure.
	Errors any
	// Code is the stable code of why the stage did not complete the
	// message (a constant of package reason), set by the stage that decided
	// it; empty for a completed entry. Operators group failures by it.
	Code string
	// At is when the stage finished; zero means now.
	At time.Time
}

// Querier is the part of a pool or transaction the writer uses.
type Querier interface {
	CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error)
}

// Limits bound what one stage-log row keeps of a message, so a device
// cannot fill the database through the stage logs.
type Limits struct {
	// SnapshotBytes bounds each of a row's input and output snapshots,
	// change set and errors, as JSON text. A longer one is written as
	// {"truncated": true, "bytes": N, "head": "<its first bytes>"} within
	// the limit.
	SnapshotBytes int
	// PayloadBytes is the stored-payload limit: a snapshot's "payload"
	// longer than it is written as {"omitted": true, "bytes": N}, since
	// not even the message row keeps all of it.
	PayloadBytes int
}

// DefaultLimits returns 16 KiB per snapshot and the 256 KiB stored-payload
// limit.
func DefaultLimits() Limits {
	return Limits{SnapshotBytes: 16 << 10, PayloadBytes: 256 << 10}
}

// minSnapshotBytes leaves room for the truncation marker.
const minSnapshotBytes = 256

// Writer writes entries according to a mode.
type Writer struct {
	mode     Mode
	rate     float64
	instance string
	limits   Limits
}

// New returns a writer with [DefaultLimits]. rate is used by the sampled
// mode only.
func New(mode Mode, rate float64, instance string) (*Writer, error) {
	switch mode {
	case ModeAll, ModeSampled, ModeFailures:
	default:
		return nil, fmt.Errorf("%w: %q", ErrMode, mode)
	}
	if rate < 0 || rate > 1 {
		return nil, fmt.Errorf("%w: sample rate %v outside 0..1", ErrMode, rate)
	}
	return &Writer{mode: mode, rate: rate, instance: instance, limits: DefaultLimits()}, nil
}

// WithLimits returns a copy of the writer that keeps to l; a zero field
// keeps the default.
func (w *Writer) WithLimits(l Limits) *Writer {
	c := *w
	def := DefaultLimits()
	if l.SnapshotBytes <= 0 {
		l.SnapshotBytes = def.SnapshotBytes
	}
	if l.PayloadBytes <= 0 {
		l.PayloadBytes = def.PayloadBytes
	}
	l.SnapshotBytes = max(l.SnapshotBytes, minSnapshotBytes)
	c.limits = l
	return &c
}

// Keep reports whether the entry is written in the writer's mode.
func (w *Writer) Keep(e *Entry) bool {
	failed := e.Status != StatusCompleted
	switch w.mode {
	case ModeFailures:
		return failed
	case ModeSampled:
		return failed || Sampled(e.DedupeKey, w.rate)
	default:
		return true
	}
}

// Sampled reports whether the dedupe key falls in the sampled fraction. It is
// deterministic, so every stage and replica picks the same messages.
func Sampled(dedupeKey string, rate float64) bool {
	if rate >= 1 {
		return true
	}
	if rate <= 0 {
		return false
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(dedupeKey))
	return float64(h.Sum64()>>11)/float64(1<<53) < rate
}

var columns = []string{
	"id", "message_id", "dedupe_key", "stage", "status", "duration_us", "attempt", "instance",
	"input_snapshot", "output_snapshot", "change_set", "errors", "created_at", "reason_code",
}

// Write writes the entries the mode keeps with one COPY. q is a pool, or the
// transaction of the stage's own writes so both commit together. Every
// field a message can fill is bounded and cleaned first (the dedupe key,
// snapshots, change set and errors), so what one message holds cannot make
// Postgres refuse the batch.
func (w *Writer) Write(ctx context.Context, q Querier, entries []Entry) error {
	rows := make([][]any, 0, len(entries))
	now := time.Now()
	for i := range entries {
		e := &entries[i]
		if !w.Keep(e) {
			continue
		}
		at := e.At
		if at.IsZero() {
			at = now
		}
		attempt := e.Attempt
		if attempt < 1 {
			attempt = 1
		}
		var in, out any
		if e.Status != StatusCompleted {
			in, out = w.withoutLongPayload(e.Input), w.withoutLongPayload(e.Output)
		}
		row := []any{
			[16]byte(uuid.Must(uuid.NewV7())), [16]byte(e.MessageID), nullable(bound.Key(e.DedupeKey, bound.MaxKeyBytes)), e.Stage, e.Status,
			max(e.Duration.Microseconds(), 0), attempt, w.instance,
		}
		for _, v := range []any{in, out, e.ChangeSet, e.Errors} {
			row = append(row, w.snapshot(v))
		}
		rows = append(rows, append(row, at, nullable(e.Code)))
	}
	if len(rows) == 0 {
		return nil
	}
	if _, err := q.CopyFrom(ctx, pgx.Identifier{"ingestion_stage_logs"}, columns, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("write %d stage logs: %w", len(rows), err)
	}
	return nil
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// withoutLongPayload returns the snapshot v with its "payload" member
// replaced by the payload's size when the payload is longer than the
// stored-payload limit: no stage log keeps what the message row does not.
func (w *Writer) withoutLongPayload(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	var n int
	switch p := m["payload"].(type) {
	case string:
		n = len(p)
	case []byte:
		n = len(p)
	case json.RawMessage:
		n = len(p)
	default:
		return v
	}
	if n <= w.limits.PayloadBytes {
		return v
	}
	c := make(map[string]any, len(m))
	for k, x := range m {
		c[k] = x
	}
	c["payload"] = map[string]any{"omitted": true, "bytes": n}
	return c
}

// snapshot encodes v for a jsonb column within the snapshot limit; raw
// JSON is passed through. A NUL character, which a payload or a value may
// carry and jsonb refuses, becomes U+FFFD, and a value JSON cannot encode
// (a NaN, say) is written as the reason, so one message's content can
// never fail the COPY of its whole batch.
func (w *Writer) snapshot(v any) any {
	var raw []byte
	switch t := v.(type) {
	case nil:
		return nil
	case json.RawMessage:
		raw = t
	case []byte:
		raw = t
	}
	var text string
	switch {
	case raw == nil:
		b, err := json.Marshal(v)
		if err != nil {
			b, _ = json.Marshal(map[string]string{"unencodable": err.Error()})
		}
		text = string(b)
	case len(raw) == 0:
		return nil
	case json.Valid(raw):
		text = string(raw)
	default:
		// Raw JSON that is not valid is kept as text, so the column always
		// holds valid jsonb.
		b, _ := json.Marshal(map[string]string{"invalid_json": string(raw)})
		text = string(b)
	}
	if len(text) > w.limits.SnapshotBytes {
		text = truncated(text, w.limits.SnapshotBytes)
	}
	return pg.JSONB(text)
}

// jsonbSpacing is what Postgres adds when it prints a truncation marker.
const jsonbSpacing = 5

// truncated returns {"truncated": true, "bytes": N, "head": "..."} for the
// JSON text s, its head as long as fits within limit bytes once encoded.
func truncated(s string, limit int) string {
	// Room for the marker's own keys and the size.
	head := limit - 64
	for {
		n := max(min(head, len(s)), 0)
		for n > 0 && n < len(s) && !utf8.RuneStart(s[n]) {
			n--
		}
		b, _ := json.Marshal(struct {
			Truncated bool   `json:"truncated"`
			Bytes     int    `json:"bytes"`
			Head      string `json:"head"`
		}{true, len(s), s[:n]})
		// jsonb prints a space after each of the marker's colons and
		// commas: leave room so that its text is within the limit too.
		if len(b)+jsonbSpacing <= limit || n == 0 {
			return string(b)
		}
		// Escapes make the head longer once encoded: shrink it in
		// proportion, and always by something.
		head = min(n*(limit-64)/len(b), n-1)
	}
}
