package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Message is an ingestion_messages row as a trace shows it.
type Message struct {
	ID               uuid.UUID  `json:"id"`
	OrganizationID   *uuid.UUID `json:"organization_id,omitempty"`
	DeviceID         *uuid.UUID `json:"device_id,omitempty"`
	Subject          string     `json:"subject"`
	SourceMessageID  *string    `json:"source_message_id,omitempty"`
	DedupeKey        string     `json:"dedupe_key"`
	Status           string     `json:"status"`
	HaltedStage      *string    `json:"halted_stage,omitempty"`
	Reason           *string    `json:"reason,omitempty"`
	DeliveryAttempts int32      `json:"delivery_attempts"`
	ReceivedAt       time.Time  `json:"received_at"`
	ProcessedAt      *time.Time `json:"processed_at,omitempty"`
	// TraceID is the message's OpenTelemetry trace id; nil when it has
	// none.
	TraceID *string `json:"trace_id,omitempty"`
}

// StageLog is an ingestion_stage_logs row as a trace shows it.
type StageLog struct {
	Stage      string          `json:"stage"`
	Status     string          `json:"status"`
	DurationUS int64           `json:"duration_us"`
	Attempt    int32           `json:"attempt"`
	Instance   string          `json:"instance"`
	Errors     json.RawMessage `json:"errors,omitempty"`
	CreatedAt  time.Time       `json:"created_at"`
}

// Telemetry is the device_telemetry_logs row a message produced.
type Telemetry struct {
	RecordedAt        time.Time       `json:"recorded_at"`
	Topic             string          `json:"topic"`
	ProcessingState   string          `json:"processing_state"`
	ValidationStatus  string          `json:"validation_status"`
	FailureReason     *string         `json:"failure_reason,omitempty"`
	MutatedValues     json.RawMessage `json:"mutated_values"`
	TransformedValues json.RawMessage `json:"transformed_values"`
	UnresolvedValues  json.RawMessage `json:"unresolved_values"`
	ValidationErrors  json.RawMessage `json:"validation_errors"`
	PublishAttempts   int32           `json:"publish_attempts"`
	NextPublishAt     *time.Time      `json:"next_publish_at,omitempty"`
	ProcessedAt       *time.Time      `json:"processed_at,omitempty"`
}

// Trace is everything recorded about one message.
type Trace struct {
	Message   Message    `json:"message"`
	StageLogs []StageLog `json:"stage_logs"`
	Telemetry *Telemetry `json:"telemetry,omitempty"`
	// OtherMatches are further messages carrying the same device message id
	// (a device resending without an id on another subject); the newest is
	// traced.
	OtherMatches []uuid.UUID `json:"other_matches,omitempty"`
}

// The trace queries. Each is served by an index so a trace stays fast on
// tables of millions of rows; TestTraceQueriesUseIndexes checks the plans.
const (
	messageColumns = `id, organization_id, device_id, source_subject, source_message_id, dedupe_key, status,
	halted_stage, error_summary, delivery_attempts, received_at, processed_at, trace_id`
	// queryMessageByID uses the primary key.
	queryMessageByID = `select ` + messageColumns + ` from ingestion_messages where id = $1`
	// queryMessageByDedupeKey uses ingestion_messages_dedupe_key_key.
	queryMessageByDedupeKey = `select ` + messageColumns + ` from ingestion_messages where dedupe_key = $1`
	// queryMessageBySourceID uses ingestion_messages_source_message_id_idx.
	queryMessageBySourceID = `select ` + messageColumns + ` from ingestion_messages where source_message_id = $1`
	// queryStageLogs uses the message_id (BRIN) and dedupe_key indexes of
	// every partition: message ids are time-ordered, so the BRIN index
	// reads only the pages written around the message's arrival. Rows of one instant (a stage writes a batch's rows with one
	// timestamp, the deriver its mutate and derive rows together) are listed
	// in the order the pipeline runs the stages, not by name.
	queryStageLogs = `select stage, status, duration_us, attempt, instance, errors, created_at
	from ingestion_stage_logs where message_id = $1 or dedupe_key = $2
	order by created_at, array_position(array['ingress', 'validate', 'mutate', 'derive', 'persist', 'publish'], stage), attempt`
	// queryTelemetry uses the primary key (id, recorded_at) of every
	// partition; the telemetry row's id is its message's id.
	queryTelemetry = `select recorded_at, topic, processing_state, validation_status, failure_reason, mutated_values,
	transformed_values, unresolved_values, validation_errors, publish_attempts, next_publish_at, processed_at
	from device_telemetry_logs where id = $1`
)

// TraceMessage finds a message by its id, its dedupe key or its device
// message id, in that order, and returns what every stage did to it. It
// returns an error wrapping ErrNotFound when nothing matches.
func TraceMessage(ctx context.Context, pool *pgxpool.Pool, ref string) (*Trace, error) {
	var msgs []Message
	var err error
	if id, perr := uuid.Parse(ref); perr == nil {
		msgs, err = queryMessages(ctx, pool, queryMessageByID, id)
		if err != nil {
			return nil, err
		}
	}
	if len(msgs) == 0 {
		if msgs, err = queryMessages(ctx, pool, queryMessageByDedupeKey, ref); err != nil {
			return nil, err
		}
	}
	if len(msgs) == 0 {
		if msgs, err = queryMessages(ctx, pool, queryMessageBySourceID, ref); err != nil {
			return nil, err
		}
	}
	if len(msgs) == 0 {
		return nil, fmt.Errorf("no message with id, dedupe key or device message id %q: %w", ref, ErrNotFound)
	}
	sort.SliceStable(msgs, func(i, j int) bool { return msgs[i].ReceivedAt.After(msgs[j].ReceivedAt) })
	tr := &Trace{Message: msgs[0], StageLogs: []StageLog{}}
	for _, m := range msgs[1:] {
		tr.OtherMatches = append(tr.OtherMatches, m.ID)
	}

	rows, err := pool.Query(ctx, queryStageLogs, tr.Message.ID, tr.Message.DedupeKey)
	if err != nil {
		return nil, fmt.Errorf("read stage logs of %s: %w", tr.Message.ID, err)
	}
	logs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (StageLog, error) {
		var l StageLog
		var errs []byte
		err := r.Scan(&l.Stage, &l.Status, &l.DurationUS, &l.Attempt, &l.Instance, &errs, &l.CreatedAt)
		if len(errs) > 0 {
			l.Errors = errs
		}
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("read stage logs of %s: %w", tr.Message.ID, err)
	}
	tr.StageLogs = append(tr.StageLogs, logs...)

	var t Telemetry
	var mutated, transformed, unresolved, verrs []byte
	err = pool.QueryRow(ctx, queryTelemetry, tr.Message.ID).Scan(&t.RecordedAt, &t.Topic, &t.ProcessingState,
		&t.ValidationStatus, &t.FailureReason, &mutated, &transformed, &unresolved, &verrs, &t.PublishAttempts,
		&t.NextPublishAt, &t.ProcessedAt)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("read telemetry of %s: %w", tr.Message.ID, err)
	default:
		t.MutatedValues, t.TransformedValues, t.UnresolvedValues, t.ValidationErrors = mutated, transformed, unresolved, verrs
		tr.Telemetry = &t
	}
	return tr, nil
}

// queryMessages runs one of the message lookups.
func queryMessages(ctx context.Context, pool *pgxpool.Pool, sql string, arg any) ([]Message, error) {
	rows, err := pool.Query(ctx, sql, arg)
	if err != nil {
		return nil, fmt.Errorf("look up message %v: %w", arg, err)
	}
	msgs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Message, error) {
		var m Message
		err := r.Scan(&m.ID, &m.OrganizationID, &m.DeviceID, &m.Subject, &m.SourceMessageID, &m.DedupeKey, &m.Status,
			&m.HaltedStage, &m.Reason, &m.DeliveryAttempts, &m.ReceivedAt, &m.ProcessedAt, &m.TraceID)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("look up message %v: %w", arg, err)
	}
	return msgs, nil
}
