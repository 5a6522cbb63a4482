// Package publisher is the publish stage: it writes each device's latest
// values to the NATS KV bucket device-states and publishes analytics and
// invalid events, then marks the telemetry rows processed or publish_failed.
// A background loop retries publish_failed rows, and rows left pending by a
// crash, until they are processed.
package publisher

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/outbox"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/tracing"
)

// Server is the gRPC handler of the publish stage.
type Server struct {
	publisherv1.UnimplementedPublisherServiceServer
	cfg     Config
	pub     *Emitter
	pool    *pgxpool.Pool
	catalog *catalog.Cache
	logs    *stagelog.Writer
	logger  *slog.Logger
	spans   *tracing.Messages
	retried *prometheus.CounterVec
}

// New returns the publish stage.
func New(cfg Config, pub *Emitter, pool *pgxpool.Pool, cat *catalog.Cache, logs *stagelog.Writer, logger *slog.Logger) *Server {
	return &Server{cfg: cfg, pub: pub, pool: pool, catalog: cat, logs: logs, logger: logger}
}

// Register registers the stage's service on s.
func (srv *Server) Register(s grpc.ServiceRegistrar) {
	publisherv1.RegisterPublisherServiceServer(s, srv)
}

// WithTracing gives each message a publish span in its trace.
func (srv *Server) WithTracing(p *tracing.Provider) *Server {
	srv.spans = p.Messages(envelope.StagePublish)
	return srv
}

// Publish publishes the persisted rows of a batch and records the result on
// each row.
func (srv *Server) Publish(ctx context.Context, req *publisherv1.PublishRequest) (resp *publisherv1.PublishResponse, err error) {
	start := time.Now()
	envs := req.GetEnvelopes()
	if err := envelope.CheckBatch(req.GetWireVersion(), envs); err != nil {
		return nil, err
	}
	// Each event carries its message's publish span as its traceparent.
	spans := srv.spans.Start(ctx, envs)
	defer func() { spans.EndAll(resp.GetOutcomes(), err) }()
	entries := make([]uuid.UUID, 0, len(req.GetOutboxIds()))
	for _, id := range req.GetOutboxIds() {
		u, err := uuid.Parse(id)
		if err != nil {
			return nil, envelope.BatchError{Index: -1, Reason: fmt.Sprintf("outbox id %q is not a UUID", id)}
		}
		entries = append(entries, u)
	}
	items := make([]Item, len(envs))
	for i, e := range envs {
		items[i] = itemFromEnvelope(e)
	}
	results := srv.pub.Publish(ctx, items, req.GetDryRun())
	outcomes := make([]*telemetryv1.Outcome, len(envs))
	for i, e := range envs {
		o := &telemetryv1.Outcome{
			MessageId: e.GetMessageId(), DedupeKey: e.GetDedupeKey(), Status: e.GetStatus(),
			ProcessingState: e.GetProcessingState(), HaltedStage: e.GetHaltedStage(), Reason: e.GetReason(),
		}
		if !items[i].Invalid {
			o.ProcessingState = telemetryv1.ProcessingState_PROCESSING_STATE_PROCESSED
			if err := results[i].Err; err != nil {
				o.ProcessingState = telemetryv1.ProcessingState_PROCESSING_STATE_PUBLISH_FAILED
				o.HaltedStage = telemetryv1.Stage_STAGE_PUBLISH
				o.Reason = err.Error()
			}
		}
		if req.GetDryRun() {
			o.Envelope = e
			if len(results[i].Subjects) > 0 {
				o.Reason = fmt.Sprintf("would publish to %v", results[i].Subjects)
			}
			if results[i].Skipped != "" {
				o.Reason = "not published: " + results[i].Skipped
			}
		}
		outcomes[i] = o
	}
	if req.GetDryRun() {
		return &publisherv1.PublishResponse{Outcomes: outcomes}, nil
	}
	if err := srv.record(ctx, items, results, time.Since(start), entries, 0, nil); err != nil {
		// The events are out but the rows say pending: the retry loop will
		// publish them again once their lease ends, and the stream drops the
		// repeats by message id. Report the batch as failed so the caller
		// does not claim them processed.
		return nil, err
	}
	return &publisherv1.PublishResponse{Outcomes: outcomes}, nil
}

// execTx is a transaction the caller owns.
type execTx interface {
	Execer
	stagelog.Querier
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// record marks the rows, writes the publish stage logs and settles the
// publish outbox in one transaction: tx when the caller has one (the retry
// loop's, holding the claimed entries), else its own. The entries the rows
// came in are removed, and the rows that failed get one of their own, due
// at their next attempt; attempts is how many the entries had.
func (srv *Server) record(ctx context.Context, items []Item, results []ItemResult, took time.Duration, entries []uuid.UUID, attempts int, tx execTx) error {
	var (
		processed  []Row
		failed     []Failure
		logEntries = make([]stagelog.Entry, 0, len(items))
		per        = took / time.Duration(max(len(items), 1))
		due        = time.Now().Add(Backoff(attempts+1, srv.cfg.RetryBase, srv.cfg.RetryMax))
	)
	for i := range items {
		it, r := &items[i], results[i]
		e := stagelog.Entry{MessageID: it.MessageID, DedupeKey: it.DedupeKey, Stage: envelope.StagePublish,
			Status: stagelog.StatusCompleted, Duration: per, Attempt: max(it.Attempt, 1)}
		switch {
		case r.Err != nil:
			e.Status = stagelog.StatusFailed
			// A row's attempt passes 1 only after an attempt that failed
			// (a row whose publish lease ran out is still at 1), so a later
			// attempt that fails repeats a failure already counted.
			e.Repeat = it.Attempt > 1
			e.Errors = map[string]any{"reason": r.Err.Error()}
			e.Code = failureCode(it, r)
			if !it.Invalid {
				failed = append(failed, Failure{Row: Row{it.MessageID, it.RecordedAt}, Reason: r.Err.Error(), RetryAt: due})
			}
		case !it.Invalid:
			processed = append(processed, Row{it.MessageID, it.RecordedAt})
		}
		if r.Skipped != "" {
			e.ChangeSet = map[string]any{"subjects": r.Subjects, "skipped": r.Skipped}
		}
		logEntries = append(logEntries, e)
	}
	own := tx == nil
	if own {
		t, err := srv.pool.Begin(ctx)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		defer func() { _ = t.Rollback(context.WithoutCancel(ctx)) }()
		tx = t
	}
	if err := Mark(ctx, tx, processed, failed); err != nil {
		return err
	}
	if err := outbox.Remove(ctx, tx, entries); err != nil {
		return err
	}
	if len(failed) > 0 {
		rows := make([]outbox.Row, len(failed))
		for i, f := range failed {
			rows[i] = outbox.Row(f.Row)
		}
		if _, err := outbox.Add(ctx, tx, rows, due, attempts+1); err != nil {
			return err
		}
	}
	// Last: it adds to the per-minute counts, which every writer updates,
	// so their rows are held only while this commits.
	if err := srv.logs.Write(ctx, tx, logEntries); err != nil {
		return err
	}
	if own {
		return tx.Commit(ctx)
	}
	return nil
}

// RetryLoop publishes due rows until ctx ends: publish_failed rows whose
// backoff has passed, and pending rows whose lease has ended (their stage
// crashed between persist and publish). The persisted rows are the outbox.
func (srv *Server) RetryLoop(ctx context.Context) error {
	t := time.NewTicker(srv.cfg.RetryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for {
			n, err := srv.RetryOnce(ctx)
			if err != nil {
				if ctx.Err() == nil {
					srv.logger.Warn("publish retry round failed", "err", err)
				}
				break
			}
			if n == 0 {
				break
			}
		}
	}
}

// RetryOnce runs one retry round: it claims due publish outbox entries,
// publishes their rows that are still pending or publish_failed, and
// records the result. It returns how many rows it published. With tracing
// on, each row's publish is a span in its message's trace, and its event
// carries that span as its traceparent.
func (srv *Server) RetryOnce(ctx context.Context) (_ int, err error) {
	start := time.Now()
	tx, err := srv.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	entries, err := outbox.ClaimDue(ctx, tx, srv.cfg.RetryBatch)
	if err != nil || len(entries) == 0 {
		return 0, err
	}
	rows, err := unpublished(ctx, tx, entries)
	if err != nil {
		return 0, err
	}
	ids, attempts := make([]uuid.UUID, len(entries)), 0
	for i, e := range entries {
		ids[i], attempts = e.ID, max(attempts, e.Attempts)
	}
	snap := srv.catalog.Snapshot()
	items := make([]Item, len(rows))
	for i, r := range rows {
		items[i] = r.item
		if snap != nil {
			if o := snap.Organizations[r.item.OrganizationID]; o != nil {
				items[i].OrganizationSlug = o.Slug
			}
		}
	}
	var outcomes []*telemetryv1.Outcome
	spans := srv.retrySpans(rows, items)
	defer func() { spans.EndAll(outcomes, err) }()
	var results []ItemResult
	if len(items) > 0 {
		results = srv.pub.Publish(ctx, items, false)
	}
	if err := srv.record(ctx, items, results, time.Since(start), ids, attempts, tx); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	if spans != nil {
		outcomes = retryOutcomes(results)
	}
	failed := 0
	for _, r := range results {
		if r.Err != nil {
			failed++
		}
	}
	if srv.retried != nil {
		srv.retried.WithLabelValues("failed").Add(float64(failed))
		srv.retried.WithLabelValues("published").Add(float64(len(results) - failed))
	}
	srv.logger.Info("publish retry round", "entries", len(entries), "rows", len(rows), "failed", failed)
	return len(rows), nil
}

// retrySpans opens the span of each row a retry round publishes, in its
// message's trace, and sets the row's traceparent to it; nil when tracing
// is off.
func (srv *Server) retrySpans(rows []claimed, items []Item) *tracing.Spans {
	if srv.spans == nil {
		return nil
	}
	traceIDs, envs := make([]string, len(rows)), make([]*telemetryv1.Envelope, len(rows))
	for i, r := range rows {
		traceIDs[i] = r.traceID
		envs[i] = &telemetryv1.Envelope{MessageId: r.item.MessageID.String(), DedupeKey: r.item.DedupeKey, DeviceExternalId: r.item.DeviceExternalID, Topic: r.item.Topic}
	}
	spans := srv.spans.Retry(traceIDs, envs)
	for i := range items {
		items[i].Traceparent = envs[i].GetTraceparent()
	}
	return spans
}

// retryOutcomes are what became of the rows a retry round published, for
// their spans: processed, or publish_failed again with the reason.
func retryOutcomes(results []ItemResult) []*telemetryv1.Outcome {
	out := make([]*telemetryv1.Outcome, len(results))
	for i, r := range results {
		out[i] = &telemetryv1.Outcome{ProcessingState: telemetryv1.ProcessingState_PROCESSING_STATE_PROCESSED}
		if r.Err != nil {
			out[i] = &telemetryv1.Outcome{ProcessingState: telemetryv1.ProcessingState_PROCESSING_STATE_PUBLISH_FAILED,
				HaltedStage: telemetryv1.Stage_STAGE_PUBLISH, Reason: r.Err.Error()}
		}
	}
	return out
}

func itemFromEnvelope(e *telemetryv1.Envelope) Item {
	it := Item{
		MessageID:        envelope.ParseUUID(e.GetMessageId()),
		DedupeKey:        e.GetDedupeKey(),
		OrganizationID:   envelope.ParseUUID(e.GetOrganizationId()),
		OrganizationSlug: e.GetOrganizationSlug(),
		DeviceUUID:       e.GetDeviceUuid(),
		DeviceExternalID: e.GetDeviceExternalId(),
		Topic:            e.GetTopic(),
		RecordedAt:       envelope.Time(e.GetRecordedAt()),
		Values:           jsonObject(e.GetTransformed()),
		Unresolved:       jsonObject(e.GetUnresolved()),
		Attempt:          1,
		Traceparent:      e.GetTraceparent(),
	}
	if it.RecordedAt.IsZero() {
		it.RecordedAt = envelope.Time(e.GetReceivedAt())
	}
	if e.GetProcessingState() == telemetryv1.ProcessingState_PROCESSING_STATE_INVALID {
		it.Invalid = true
		it.ValidationErrors = envelope.ValidationErrors(e.GetValidationErrors())
		it.InvalidReason = "invalid"
		if errs := e.GetValidationErrors(); len(errs) > 0 {
			it.InvalidReason = errs[0].GetCode()
		}
	}
	return it
}

// jsonObject returns a JSON object as raw JSON, nil when it is empty.
func jsonObject(s string) json.RawMessage {
	if s == "" || s == "{}" {
		return nil
	}
	return json.RawMessage(s)
}
