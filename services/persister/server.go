// Package persister is the persist stage: it writes each batch to Postgres in
// one transaction, then hands the stored rows to the publisher.
package persister

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/outbox"
	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/tracing"
)

// Server is the gRPC handler of the persist stage.
type Server struct {
	persisterv1.UnimplementedPersisterServiceServer
	cfg       Config
	store     *Store
	logs      *stagelog.Writer
	publisher publisherv1.PublisherServiceClient
	logger    *slog.Logger
	spans     *tracing.Messages
	writes    prometheus.Observer
}

// WithMetrics registers telemesh_persister_write_seconds on reg: how long
// each batch's transaction took (the COPYs and statements of its rows, a
// split batch's parts included), the cost the pipeline's rate hangs on.
func (srv *Server) WithMetrics(reg prometheus.Registerer) (*Server, error) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "telemesh_persister_write_seconds",
		Help:    "Time to write one batch in Postgres: its transaction (COPY and statements), until commit.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
	})
	if err := reg.Register(h); err != nil {
		return nil, fmt.Errorf("register persister metrics: %w", err)
	}
	srv.writes = h
	return srv, nil
}

// New returns the persist stage.
func New(cfg Config, store *Store, logs *stagelog.Writer, publisher publisherv1.PublisherServiceClient, logger *slog.Logger) *Server {
	return &Server{cfg: cfg, store: store, logs: logs, publisher: publisher, logger: logger}
}

// WithTracing gives each message a persist span in its trace.
func (srv *Server) WithTracing(p *tracing.Provider) *Server {
	srv.spans = p.Messages(envelope.StagePersist)
	return srv
}

// Register registers the stage's service on s.
func (srv *Server) Register(s grpc.ServiceRegistrar) {
	persisterv1.RegisterPersisterServiceServer(s, srv)
}

// Persist stores the batch, then calls the publisher for the rows it stored.
func (srv *Server) Persist(ctx context.Context, req *persisterv1.PersistRequest) (resp *persisterv1.PersistResponse, err error) {
	start := time.Now()
	envs := req.GetEnvelopes()
	if err := envelope.CheckBatch(req.GetWireVersion(), envs); err != nil {
		return nil, err
	}
	// The span ends after the publisher answered, with the message's outcome.
	spans := srv.spans.Start(ctx, envs)
	defer func() { spans.EndAll(resp.GetOutcomes(), err) }()
	msgs := make([]Message, len(envs))
	for i, e := range envs {
		msgs[i] = toMessage(e)
	}
	// Each message's rows: the ones it carried from the stages before, then
	// the persist stage's own, all in the batch's transaction.
	logs := func(b *stagelog.Batch, i int, r Result, carried bool) {
		e := envs[i]
		if carried {
			b.AddCarried(envelope.ParseUUID(e.GetMessageId()), e.GetDedupeKey(), e.GetStageLog()...)
		}
		// A duplicate's row goes with the rest of its delivery's rows, under
		// the delivery's own id; its dedupe key leads to it from the
		// original, whose id it names.
		id := r.OriginalID
		if r.Disposition == Duplicate {
			id = envelope.ParseUUID(e.GetMessageId())
		}
		entry := stagelog.Entry{
			MessageID: id, DedupeKey: e.GetDedupeKey(), Stage: envelope.StagePersist,
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
		b.Add(&entry)
	}
	began := time.Now()
	results, entries, err := srv.store.Persist(ctx, msgs, req.GetDryRun(), srv.logs, logs)
	if srv.writes != nil && !req.GetDryRun() {
		tracing.Observe(ctx, srv.writes, time.Since(began).Seconds())
	}
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
			MessageId: r.OriginalID.String(), DedupeKey: e.GetDedupeKey(), Status: envelope.StatusFromString(string(m.Status)),
			HaltedStage: e.GetHaltedStage(), Reason: withNote(e.GetReason(), r.PayloadNote),
		}
		if m.Telemetry != nil {
			out.ProcessingState = envelope.StateFromString(string(m.Telemetry.State))
			if m.Telemetry.State == pipeline.StatePending || m.Telemetry.State == pipeline.StateInvalid {
				toPublish = append(toPublish, forPublisher(e, r.OriginalID, out, req.GetDryRun()))
				publishIdx = append(publishIdx, i)
			}
		}
		outcomes[i] = out
	}
	if len(toPublish) > 0 {
		srv.publish(ctx, req.GetDryRun(), toPublish, publishIdx, outcomes, entries)
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
func (srv *Server) publish(ctx context.Context, dryRun bool, envs []*telemetryv1.Envelope, idx []int, outcomes []*telemetryv1.Outcome, entries []uuid.UUID) {
	pctx, cancel := context.WithTimeout(ctx, srv.cfg.PublishTimeout)
	defer cancel()
	ids := make([]string, len(entries))
	for i, id := range entries {
		ids[i] = id.String()
	}
	stopRenewing := srv.renewLease(ctx, entries)
	resp, err := srv.publisher.Publish(pctx, &publisherv1.PublishRequest{Envelopes: envs, DryRun: dryRun, WireVersion: envelope.WireVersion, OutboxIds: ids})
	stopRenewing()
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
	if err := srv.store.MarkPublishFailed(mctx, pending, from, to, why, time.Now().Add(srv.cfg.RetryDelay), entries); err != nil {
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

// renewLease keeps the publish lease of the batch's outbox entries while
// the call to the publisher is under way: every third of the lease it makes
// them due one lease from then. The retry loop leaves a live call's rows
// alone however long it takes, and takes over the rows of a persister that
// died within one lease. The returned function stops it.
func (srv *Server) renewLease(ctx context.Context, entries []uuid.UUID) (stop func()) {
	if len(entries) == 0 || srv.cfg.PublishLease <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(max(srv.cfg.PublishLease/3, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), srv.cfg.PublishLease/3)
			err := outbox.Renew(rctx, srv.store.pool, entries, srv.cfg.PublishLease)
			cancel()
			if err != nil {
				// The retry loop may take the rows while the call is still
				// under way; the publish is idempotent (compare-and-set,
				// Nats-Msg-Id, a mark only of rows still waiting), so that
				// costs a second publish, never a wrong row.
				srv.logger.WarnContext(ctx, "could not renew the publish lease of a batch under way", "entries", len(entries), "err", err)
			}
		}
	}()
	return func() {
		close(done)
		<-finished
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
		TraceID:         tracing.TraceID(e.GetTraceparent()),
	}
	var state pipeline.State
	switch e.GetStatus() {
	case telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL:
		m.Status = pipeline.StatusFailedTerminal
	case telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED:
		m.Status = pipeline.StatusParked
	case telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_VALIDATION:
		m.Status, state = pipeline.StatusFailedValidation, pipeline.StateInvalid
	case telemetryv1.MessageStatus_MESSAGE_STATUS_INACTIVE_SKIPPED:
		m.Status, state = pipeline.StatusInactiveSkipped, pipeline.StateInactiveSkipped
	default:
		m.Status, state = pipeline.StatusCompleted, pipeline.StatePending
	}
	if state == "" || m.DeviceID == uuid.Nil {
		if state != "" {
			// Without a device there is no telemetry row to keep.
			m.Status = pipeline.StatusFailedTerminal
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
	mutated, transformed := e.GetValues(), e.GetTransformed()
	// A halted message never reached the deriver: its extracted values are
	// all it has, as they are. One that did is stored with what the deriver
	// gave, even nothing: a value whose mutation failed is left out on
	// purpose.
	if transformed == "" && envelope.Halted(e) {
		transformed = mutated
	}
	m.Telemetry = &Telemetry{
		Topic:            e.GetTopic(),
		RecordedAt:       recorded,
		State:            state,
		Valid:            state != pipeline.StateInvalid,
		ValidationErrors: envelope.ValidationErrors(e.GetValidationErrors()),
		Mutated:          mutated,
		Transformed:      transformed,
		Unresolved:       e.GetUnresolved(),
	}
	for _, v := range e.GetValidationErrors() {
		// An error of no parameter is about the payload as a whole.
		if v.GetParameter() == "" {
			m.Telemetry.PayloadRefused = true
		}
	}
	if state == pipeline.StateInvalid {
		m.Telemetry.FailureReason = e.GetReason()
	}
	return m
}

// forPublisher is the envelope the publisher gets for a stored message:
// only what it publishes and records, not the payload nor the rows the
// message carried, which are written already.
func forPublisher(e *telemetryv1.Envelope, id uuid.UUID, out *telemetryv1.Outcome, dryRun bool) *telemetryv1.Envelope {
	pub := &telemetryv1.Envelope{
		MessageId: id.String(), DedupeKey: e.GetDedupeKey(),
		OrganizationId: e.GetOrganizationId(), OrganizationSlug: e.GetOrganizationSlug(),
		DeviceUuid: e.GetDeviceUuid(), DeviceExternalId: e.GetDeviceExternalId(), Topic: e.GetTopic(),
		DeliveryAttempt: e.GetDeliveryAttempt(), ReceivedAt: e.GetReceivedAt(), RecordedAt: e.GetRecordedAt(),
		Transformed: e.GetTransformed(), Unresolved: e.GetUnresolved(), ValidationErrors: e.GetValidationErrors(),
		Status: out.GetStatus(), ProcessingState: out.GetProcessingState(), HaltedStage: e.GetHaltedStage(),
		Reason: e.GetReason(), ReasonCode: e.GetReasonCode(), Traceparent: e.GetTraceparent(),
	}
	if pub.Transformed == "" {
		pub.Transformed = e.GetValues()
	}
	if dryRun {
		// What an operator sees of a dry run is the whole envelope.
		pub.Values, pub.Payload, pub.SourceSubject, pub.SourceMessageId = e.GetValues(), e.GetPayload(), e.GetSourceSubject(), e.GetSourceMessageId()
	}
	return pub
}
