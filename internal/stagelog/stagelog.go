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

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

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

// Writer writes entries according to a mode.
type Writer struct {
	mode     Mode
	rate     float64
	instance string
}

// New returns a writer. rate is used by the sampled mode only.
func New(mode Mode, rate float64, instance string) (*Writer, error) {
	switch mode {
	case ModeAll, ModeSampled, ModeFailures:
	default:
		return nil, fmt.Errorf("%w: %q", ErrMode, mode)
	}
	if rate < 0 || rate > 1 {
		return nil, fmt.Errorf("%w: sample rate %v outside 0..1", ErrMode, rate)
	}
	return &Writer{mode: mode, rate: rate, instance: instance}, nil
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
// transaction of the stage's own writes so both commit together.
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
			in, out = e.Input, e.Output
		}
		row := []any{
			[16]byte(uuid.Must(uuid.NewV7())), [16]byte(e.MessageID), nullable(e.DedupeKey), e.Stage, e.Status,
			e.Duration.Microseconds(), attempt, w.instance,
		}
		for _, v := range []any{in, out, e.ChangeSet, e.Errors} {
			j, err := jsonOrNil(v)
			if err != nil {
				return fmt.Errorf("stage log %s %s: %w", e.Stage, e.MessageID, err)
			}
			row = append(row, j)
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

// jsonOrNil encodes v for a jsonb column; raw JSON is passed through. A
// NUL character, which a payload or a value may carry and jsonb refuses,
// becomes U+FFFD, so one message's content can never fail the COPY of its
// whole batch.
func jsonOrNil(v any) (any, error) {
	switch t := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if len(t) == 0 {
			return nil, nil
		}
		return pg.JSONB(string(t)), nil
	case []byte:
		if len(t) == 0 {
			return nil, nil
		}
		return pg.JSONB(string(t)), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return pg.JSONB(string(b)), nil
}
