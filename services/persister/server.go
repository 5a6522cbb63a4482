// Package persister is the persist stage: it writes each batch to Postgres in
// one transaction, then hands the stored rows to the publisher.
package persister

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
)

// Config tunes the stage.
type Config struct {
	// PublishTimeout bounds the call to the publisher; past it the rows are
	// publish_failed and the publisher's retry loop takes them.
	PublishTimeout time.Duration
	// PublishLease is how long a pending row is left to the synchronous
	// publish before the retry loop may take it.
	PublishLease time.Duration
	// RetryDelay is when a publish_failed row is first retried.
	RetryDelay time.Duration
	// StoredPayloadBytes is the stored-payload limit: of a longer payload
	// the message row keeps the first bytes, its size and its SHA-256, and
	// the telemetry row no copy.
	StoredPayloadBytes int
}

// DefaultConfig returns the settings used when none are given.
func DefaultConfig() Config {
	return Config{PublishTimeout: 10 * time.Second, PublishLease: 30 * time.Second, RetryDelay: 2 * time.Second, StoredPayloadBytes: 256 << 10}
}

// Server is the gRPC handler of the persist stage.
type Server struct {
	persisterv1.UnimplementedPersisterServiceServer
	cfg       Config
	store     *Store
	logs      *stagelog.Writer
	publisher publisherv1.PublisherServiceClient
	logger    *slog.Logger
}

// New returns the persist stage.
func New(cfg Config, store *Store, logs *stagelog.Writer, publisher publisherv1.PublisherServiceClient, logger *slog.Logger) *Server {
	return &Server{cfg: cfg, store: store, logs: logs, publisher: publisher, logger: logger}
}

// Register registers the stage's service on s.
func (srv *Server) Register(s grpc.ServiceRegistrar) {
	persisterv1.RegisterPersisterServiceServer(s, srv)
}

// Persist stores the batch, then calls the publisher for the rows it stored.
func (srv *Server) Persist(ctx context.Context, req *persisterv1.PersistRequest) (*persisterv1.PersistResponse, error) {
	start := time.Now()
	envs := req.GetEnvelopes()
	msgs := make([]Message, len(envs))
	for i, e := range envs {
		msgs[i] = toMessage(e)
	}
	logs := func(i int, r Result) stagelog.Entry {
		e := envs[i]
		entry := stagelog.Entry{
			MessageID: r.OriginalID, DedupeKey: e.GetDedupeKey(), Stage: envelope.StagePersist,
			Status: stagelog.StatusCompleted, Duration: time.Since(start) / time.Duration(max(len(envs), 1)), Attempt: int(e.GetDeliveryAttempt()),
		}
		switch r.Disposition {
		case Duplicate:
			entry.Status = stagelog.StatusDuplicate
			entry.Errors = map[string]any{"duplicate_of": r.OriginalID, "original_status": r.OriginalStatus}
			entry.Code = reason.Duplicate
		case Refused:
			entry.Status = stagelog.StatusFailed
			entry.Errors = map[string]any{"reason": r.Reason}
			entry.Code = reason.Unstorable
		}
		return entry
	}
	results, err := srv.store.Persist(ctx, msgs, req.GetDryRun(), srv.logs, logs)
	if err != nil {
		return nil, fmt.Errorf("persist %d messages: %w", len(envs), err)
	}

	outcomes := make([]*telemetryv1.Outcome, len(envs))
	var toPublish []*telemetryv1.Envelope
	var publishIdx []int
	for i, e := range envs {
		r := results[i]
		switch r.Disposition {
		case Duplicate:
			outcomes[i] = &telemetryv1.Outcome{
				MessageId: r.OriginalID.String(), DedupeKey: e.GetDedupeKey(),
				Status: telemetryv1.MessageStatus_MESSAGE_STATUS_DUPLICATE, HaltedStage: telemetryv1.Stage_STAGE_PERSIST,
				Reason: fmt.Sprintf("duplicate of message %s (%s)", r.OriginalID, r.OriginalStatus),
			}
			continue
		case Refused:
			outcomes[i] = &telemetryv1.Outcome{
				MessageId: r.OriginalID.String(), DedupeKey: e.GetDedupeKey(),
				Status: telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL, HaltedStage: telemetryv1.Stage_STAGE_PERSIST,
				Reason: r.Reason,
			}
			continue
		}
		m := &msgs[i]
		out := &telemetryv1.Outcome{
			MessageId: r.OriginalID.String(), DedupeKey: e.GetDedupeKey(), Status: envelope.StatusFromString(m.Status),
			HaltedStage: e.GetHaltedStage(), Reason: withNote(e.GetReason(), r.PayloadNote),
		}
		if m.Telemetry != nil {
			out.ProcessingState = envelope.StateFromString(m.Telemetry.State)
			if m.Telemetry.State == StatePending || m.Telemetry.State == StateInvalid {
				pub := proto.Clone(e).(*telemetryv1.Envelope)
				pub.MessageId = r.OriginalID.String()
				pub.Status = out.Status
				pub.ProcessingState = out.ProcessingState
				toPublish = append(toPublish, pub)
				publishIdx = append(publishIdx, i)
			}
		}
		outcomes[i] = out
	}
	if len(toPublish) > 0 {
		srv.publish(ctx, req.GetDryRun(), toPublish, publishIdx, outcomes)
	}
	if req.GetDryRun() {
		for i, e := range envs {
			if outcomes[i].Envelope == nil {
				outcomes[i].Envelope = e
			}
		}
	}
	return &persisterv1.PersistResponse{Outcomes: outcomes}, nil
}

// publish calls the publisher after the commit. A publisher that cannot be
// reached never undoes the stored rows: they become publish_failed and the
// publisher's retry loop publishes them later.
func (srv *Server) publish(ctx context.Context, dryRun bool, envs []*telemetryv1.Envelope, idx []int, outcomes []*telemetryv1.Outcome) {
	pctx, cancel := context.WithTimeout(ctx, srv.cfg.PublishTimeout)
	defer cancel()
	resp, err := srv.publisher.Publish(pctx, &publisherv1.PublishRequest{Envelopes: envs, DryRun: dryRun})
	if err == nil && len(resp.GetOutcomes()) == len(envs) {
		for j, o := range resp.GetOutcomes() {
			i := idx[j]
			outcomes[i].ProcessingState = o.GetProcessingState()
			if o.GetReason() != "" {
				outcomes[i].Reason = o.GetReason()
				outcomes[i].HaltedStage = o.GetHaltedStage()
			}
			if dryRun {
				outcomes[i].Envelope = o.GetEnvelope()
			}
		}
		return
	}
	if err == nil {
		err = fmt.Errorf("publisher answered %d outcomes for %d envelopes", len(resp.GetOutcomes()), len(envs))
	}
	why := "publisher unreachable: " + err.Error()
	srv.logger.WarnContext(ctx, "publish after persist failed; rows are publish_failed and will be retried", "rows", len(envs), "err", err)
	var (
		pending  []uuid.UUID
		from, to time.Time
	)
	for j, e := range envs {
		i := idx[j]
		if e.GetProcessingState() != telemetryv1.ProcessingState_PROCESSING_STATE_PENDING {
			continue
		}
		outcomes[i].ProcessingState = telemetryv1.ProcessingState_PROCESSING_STATE_PUBLISH_FAILED
		outcomes[i].HaltedStage = telemetryv1.Stage_STAGE_PUBLISH
		outcomes[i].Reason = why
		if id, perr := uuid.Parse(e.GetMessageId()); perr == nil {
			pending = append(pending, id)
			at := envelope.Time(e.GetRecordedAt())
			if at.IsZero() {
				at = envelope.Time(e.GetReceivedAt())
			}
			if from.IsZero() || at.Before(from) {
				from = at
			}
			if at.After(to) {
				to = at
			}
		}
	}
	if dryRun || len(pending) == 0 {
		return
	}
	// The stage context may be the one that expired; the rows must still be
	// marked so an operator sees why they are not processed.
	mctx, mcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer mcancel()
	if err := srv.store.MarkPublishFailed(mctx, pending, from, to, why, time.Now().Add(srv.cfg.RetryDelay)); err != nil {
		// The rows stay pending; the retry loop takes them once their lease
		// ends, so nothing is lost.
		srv.logger.ErrorContext(ctx, "could not mark rows publish_failed; they stay pending for the retry loop", "err", err)
		return
	}
	// The publish stage's row for this attempt, which the publisher never
	// saw: without it the message's trail would not say why it is
	// publish_failed until the retry loop takes it.
	if err := srv.logs.Write(mctx, srv.store.pool, publishFailedLogs(envs, why)); err != nil {
		srv.logger.ErrorContext(ctx, "could not write the publish stage logs of rows left publish_failed", "err", err)
	}
}

// publishFailedLogs are the publish stage's rows of the pending envelopes
// the publisher could not be reached for.
func publishFailedLogs(envs []*telemetryv1.Envelope, why string) []stagelog.Entry {
	entries := make([]stagelog.Entry, 0, len(envs))
	for _, e := range envs {
		if e.GetProcessingState() != telemetryv1.ProcessingState_PROCESSING_STATE_PENDING {
			continue
		}
		entries = append(entries, stagelog.Entry{
			MessageID: envelope.ParseUUID(e.GetMessageId()), DedupeKey: e.GetDedupeKey(), Stage: envelope.StagePublish,
			Status: stagelog.StatusFailed, Attempt: 1, Errors: map[string]any{"reason": why}, Code: reason.PublisherUnreachable,
		})
	}
	return entries
}

// toMessage maps an envelope to what is stored for it.
func toMessage(e *telemetryv1.Envelope) Message {
	m := Message{
		ID:              envelope.ParseUUID(e.GetMessageId()),
		DedupeKey:       e.GetDedupeKey(),
		SourceMessageID: e.GetSourceMessageId(),
		SourceSubject:   e.GetSourceSubject(),
		OrganizationID:  envelope.ParseUUID(e.GetOrganizationId()),
		DeviceID:        envelope.ParseUUID(e.GetDeviceUuid()),
		StreamSequence:  e.GetStreamSequence(),
		DeliveryAttempt: int(e.GetDeliveryAttempt()),
		RawPayload:      e.GetPayload(),
		ContentType:     e.GetContentType(),
		HaltedStage:     envelope.StageName(e.GetHaltedStage()),
		Reason:          e.GetReason(),
		ReceivedAt:      envelope.Time(e.GetReceivedAt()),
	}
	var state string
	switch e.GetStatus() {
	case telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL:
		m.Status = StatusFailedTerminal
	case telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED:
		m.Status = StatusParked
	case telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_VALIDATION:
		m.Status, state = StatusFailedValidation, StateInvalid
	case telemetryv1.MessageStatus_MESSAGE_STATUS_INACTIVE_SKIPPED:
		m.Status, state = StatusInactiveSkipped, StateInactiveSkipped
	default:
		m.Status, state = StatusCompleted, StatePending
	}
	if state == "" || m.DeviceID == uuid.Nil {
		if state != "" {
			// Without a device there is no telemetry row to keep.
			m.Status = StatusFailedTerminal
			if m.Reason == "" {
				m.Reason = "no device resolved"
			}
		}
		return m
	}
	recorded := envelope.Time(e.GetRecordedAt())
	if recorded.IsZero() {
		recorded = m.ReceivedAt
	}
	mutated := envelope.Values(e.GetMutated())
	// A halted message never reached the deriver, so its extracted values
	// are what it has. One that did is stored with what the deriver gave,
	// even nothing: a value whose mutation failed is left out on purpose.
	if len(mutated) == 0 && envelope.Halted(e) {
		mutated = envelope.Values(e.GetExtracted())
	}
	transformed := make(map[string]any, len(mutated)+len(e.GetDerived()))
	for k, v := range mutated {
		transformed[k] = v
	}
	derived, unresolved := envelope.Derived(e.GetDerived())
	for k, v := range derived {
		transformed[k] = v
	}
	m.Telemetry = &Telemetry{
		Topic:            e.GetTopic(),
		RecordedAt:       recorded,
		State:            state,
		Valid:            state != StateInvalid,
		ValidationErrors: envelope.ValidationErrors(e.GetValidationErrors()),
		Mutated:          mutated,
		Transformed:      transformed,
		Unresolved:       unresolved,
	}
	for _, v := range e.GetValidationErrors() {
		// An error of no parameter is about the payload as a whole.
		if v.GetParameter() == "" {
			m.Telemetry.PayloadRefused = true
		}
	}
	if state == StateInvalid {
		m.Telemetry.FailureReason = e.GetReason()
	}
	return m
}
