package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/bound"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/grpcx"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/tracing"
)

// Server is the ingress stage.
type Server struct {
	gatewayv1.UnimplementedGatewayServiceServer
	cfg       Config
	js        jetstream.JetStream
	validator validatorv1.ValidatorServiceClient
	catalog   *catalog.Cache
	pool      *pgxpool.Pool
	logs      *stagelog.Writer
	logger    *slog.Logger
	filter    *SubjectFilter
	metrics   *Metrics

	epoch string
	cons  jetstream.Consumer
	// scraped is cons for the metrics collector, which reads it from
	// another goroutine.
	scraped atomic.Value

	// spans starts each message's ingress span; nil when tracing is off.
	spans  *tracing.Messages
	tracer trace.Tracer
}

// New returns the gateway. Call [Server.Setup] before [Server.Run].
func New(cfg Config, js jetstream.JetStream, validator validatorv1.ValidatorServiceClient, cat *catalog.Cache, pool *pgxpool.Pool, logs *stagelog.Writer, metrics *Metrics, logger *slog.Logger) *Server {
	if cfg.StoredPayloadBytes <= 0 {
		cfg.StoredPayloadBytes = DefaultConfig().StoredPayloadBytes
	}
	return &Server{
		cfg: cfg, js: js, validator: validator, catalog: cat, pool: pool, logs: logs, logger: logger,
		filter: NewSubjectFilter(cfg.OwnPrefixes...), metrics: metrics,
	}
}

// WithTracing traces each message from its ingress on, continuing the
// trace of the device's traceparent header, and each batch's trip down the
// chain.
func (g *Server) WithTracing(p *tracing.Provider) *Server {
	g.spans, g.tracer = p.Messages(envelope.StageIngress), p.Tracer()
	return g
}

// Register registers the stage's service on s.
func (g *Server) Register(s grpc.ServiceRegistrar) {
	gatewayv1.RegisterGatewayServiceServer(s, g)
}

// Setup creates or updates the stream and the durable consumer. It is
// idempotent: every replica runs it at start.
func (g *Server) Setup(ctx context.Context) error {
	stream, err := g.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        g.cfg.Stream,
		Description: "device telemetry captured for telemesh",
		Subjects:    g.cfg.Subjects,
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      g.cfg.MaxAge,
		Duplicates:  g.cfg.Duplicates,
		Replicas:    g.cfg.Replicas,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", g.cfg.Stream, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s info: %w", g.cfg.Stream, err)
	}
	g.epoch = fmt.Sprintf("%s@%d", info.Config.Name, info.Created.UnixNano())
	// No BackOff: JetStream would take it as each delivery's ack wait and
	// redeliver batches still in progress. A failed batch is NAKed with the
	// gateway's own delay instead (retryLater); AckWait covers a crash.
	// CreateOrUpdateConsumer also updates a consumer an earlier release
	// made, so an existing deployment takes the new AckWait and
	// MaxAckPending at its next start.
	cons, err := g.js.CreateOrUpdateConsumer(ctx, g.cfg.Stream, jetstream.ConsumerConfig{
		Durable:       g.cfg.Consumer,
		Description:   "telemesh gateway; shared by every replica",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       g.cfg.AckWait,
		MaxDeliver:    g.cfg.MaxDeliver,
		MaxAckPending: g.cfg.ackPending(),
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", g.cfg.Consumer, err)
	}
	g.cons = cons
	g.scraped.Store(cons)
	return nil
}

// delivered is one JetStream message with its envelope, and its ingress
// span (span i of spans), ended with the message's outcome.
type delivered struct {
	msg   jetstream.Msg
	env   *telemetryv1.Envelope
	spans *tracing.Spans
	i     int
	// held are the rows the message carried down the chain in a call that
	// failed, taken off it while its batch is split (see [hold]).
	held []*telemetryv1.StageRecord
}

// Run consumes until ctx ends. While the global pipeline switch is off it
// stops pulling: the stream keeps the backlog, and resuming drains it. On
// return every batch it started has been finished, and every message it
// pulled but did not start has been handed back (NAKed) for another
// replica or the next start to take at once.
func (g *Server) Run(ctx context.Context) error {
	if g.cons == nil {
		return errors.New("gateway: Setup was not called")
	}
	// Unbuffered: at most one gathered batch waits for a free worker, in
	// consume, where its delivery is kept alive (see [Server.offer]).
	batches := make(chan []jetstream.Msg)
	var wg sync.WaitGroup
	for range g.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				// A batch in flight is finished even when ctx ends: its
				// messages were pulled and must be acknowledged or NAKed.
				g.handle(context.WithoutCancel(ctx), b)
			}
		}()
	}
	defer func() {
		close(batches)
		wg.Wait()
	}()

	for ctx.Err() == nil {
		// Until the catalog is loaded no subject can be resolved, and a
		// message taken now would be wrongly called an unknown topic.
		if g.catalog.Snapshot() == nil || !g.catalog.Switches().Global.PipelineEnabled {
			g.metrics.paused.Set(1)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		g.metrics.paused.Set(0)
		if err := g.consume(ctx, batches); err != nil && ctx.Err() == nil {
			g.logger.Warn("consumer interrupted; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// pullBuffer is how many messages one pull subscription may hold: what the
// consumer may have delivered and not yet acknowledged, and a batch more
// for status messages and a redelivery overtaking its first copy. The
// subscription's buffer is as large as the pull, and JetStream never
// delivers past MaxAckPending, so even after a reconnect, when the client
// asks again while the server still delivers on the old request, no
// message is dropped as a slow consumer.
func (g *Server) pullBuffer() int {
	return g.cfg.ackPending() + g.cfg.BatchSize
}

// consume pulls batches until ctx ends, the pipeline is paused, or the
// subscription fails.
func (g *Server) consume(ctx context.Context, batches chan<- []jetstream.Msg) error {
	iter, err := g.cons.Messages(jetstream.PullMaxMessages(g.pullBuffer()),
		// A pull request lives on the consumer's leader; when that server
		// dies the request dies with it, silently. Idle heartbeats every
		// half second tell within one that it is gone, and the iterator
		// pulls again (and again, until a new leader answers), instead of
		// after the default 30 s expiry.
		jetstream.PullExpiry(pullExpiry), jetstream.PullHeartbeat(pullHeartbeat))
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	stopping := false
	defer func() {
		if !stopping {
			iter.Stop()
		}
	}()
	for {
		if ctx.Err() != nil {
			g.handBack(iter)
			stopping = true
			return nil
		}
		if !stopping && !g.catalog.Switches().Global.PipelineEnabled {
			// Take what is already buffered, then stop pulling.
			iter.Drain()
			stopping = true
		}
		batch, err := g.collect(iter)
		if len(batch) > 0 {
			if ctx.Err() != nil {
				g.nak(batch)
				g.handBack(iter)
				stopping = true
				return nil
			}
			if !g.offer(ctx, batches, batch) {
				g.nak(batch)
				g.handBack(iter)
				stopping = true
				return nil
			}
		}
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if errors.Is(err, jetstream.ErrNoHeartbeat) {
			// The iterator has forgotten the lost request and asks again
			// on the next call.
			g.logger.Info("pull request lost (no heartbeat); pulling again")
			continue
		}
		if err != nil && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
	}
}

// offer hands batch to the next free worker and reports whether one took
// it before ctx ended. While every worker is busy the batch waits here,
// pulled and not started, kept alive as a batch in flight is: a wait
// longer than AckWait does not bring its messages back.
func (g *Server) offer(ctx context.Context, batches chan<- []jetstream.Msg, batch []jetstream.Msg) bool {
	g.metrics.batchMessages.Observe(float64(len(batch)))
	select {
	case batches <- batch:
		return true
	default:
	}
	defer g.keepAlive(batch)()
	select {
	case batches <- batch:
		return true
	case <-ctx.Done():
		return false
	}
}

// The pull requests' expiry and idle heartbeat: short, so a request lost
// with a NATS server is noticed within seconds.
const (
	pullExpiry    = 5 * time.Second
	pullHeartbeat = 500 * time.Millisecond
)

// handBackWait bounds the wait for the last buffered messages once the
// subscription drains on a stop.
const handBackWait = time.Second

// handBack stops pulling and NAKs every message the subscription holds but
// no worker started, so JetStream redelivers them at once to another
// replica, or to this one's successor, instead of after AckWait.
func (g *Server) handBack(iter jetstream.MessagesContext) {
	iter.Drain()
	n := 0
	for {
		m, err := iter.Next(jetstream.NextMaxWait(handBackWait))
		if err != nil {
			break
		}
		_ = m.Nak()
		n++
	}
	if n > 0 {
		g.metrics.handedBack.Add(float64(n))
		g.logger.Info("stopping: messages pulled but not started handed back for redelivery", "messages", n)
	}
}

// nak hands messages not started back for immediate redelivery.
func (g *Server) nak(batch []jetstream.Msg) {
	for _, m := range batch {
		_ = m.Nak()
	}
	g.metrics.handedBack.Add(float64(len(batch)))
}

// collect takes up to BatchSize messages: it waits up to 200ms for the first
// (so the loop notices switches and shutdown), then at most BatchAge more.
func (g *Server) collect(iter jetstream.MessagesContext) ([]jetstream.Msg, error) {
	first, err := iter.Next(jetstream.NextMaxWait(200 * time.Millisecond))
	if err != nil {
		return nil, err
	}
	batch := make([]jetstream.Msg, 1, g.cfg.BatchSize)
	batch[0] = first
	deadline := time.Now().Add(g.cfg.BatchAge)
	for len(batch) < g.cfg.BatchSize {
		wait := time.Until(deadline)
		if wait <= 0 {
			break
		}
		m, err := iter.Next(jetstream.NextMaxWait(wait))
		if err != nil {
			if errors.Is(err, nats.ErrTimeout) {
				break
			}
			return batch, err
		}
		batch = append(batch, m)
	}
	return batch, nil
}

// keepAlive tells JetStream every AckWait/3 that the messages are still
// being worked on, so a batch that takes longer than AckWait (a slow stage,
// a publish retried), or waits that long for a free worker, is not
// redelivered. The returned function stops it; call it once every message
// has its terminal outcome, or has been NAKed. A gateway that dies stops sending, and its messages
// come back after one AckWait.
func (g *Server) keepAlive(msgs []jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(max(g.cfg.AckWait/3, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for _, m := range msgs {
				// A message acknowledged meanwhile answers
				// ErrMsgAlreadyAckd; nothing to do for it.
				_ = m.InProgress()
			}
			g.metrics.inProgress.Inc()
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// handle sends one batch down the chain and acknowledges each message whose
// outcome is terminal.
func (g *Server) handle(ctx context.Context, msgs []jetstream.Msg) {
	start := time.Now()
	snap, switches := g.catalog.Snapshot(), g.catalog.Switches()
	batch := make([]delivered, 0, len(msgs))
	for _, m := range msgs {
		if g.filter.Ignored(m.Subject()) {
			// Not telemetry: a wide stream scope caught an internal subject.
			g.metrics.ignored.Inc()
			_ = m.Term()
			continue
		}
		in := Incoming{Subject: m.Subject(), Payload: m.Data(), ReceivedAt: time.Now()}
		var traceparent string
		if h := m.Headers(); h != nil {
			in.HeaderMessageID = h.Get("Nats-Msg-Id")
			traceparent = h.Get("traceparent")
		}
		if md, err := m.Metadata(); err == nil {
			in.StreamSequence, in.Delivery, in.ReceivedAt = md.Sequence.Stream, uint32(md.NumDelivered), md.Timestamp
		}
		env := BuildEnvelope(in, snap, switches, g.epoch)
		// The device's trace continues through the chain (and its id is
		// stored with the message) even when this stage does not trace.
		if tracing.TraceID(traceparent) != "" {
			env.Traceparent = traceparent
		}
		batch = append(batch, delivered{msg: m, env: env})
	}
	if len(batch) == 0 {
		return
	}
	if spans := g.spans.Start(ctx, envelopes(batch)); spans != nil {
		for i := range batch {
			batch[i].spans, batch[i].i = spans, i
		}
	}
	alive := make([]jetstream.Msg, len(batch))
	for i, d := range batch {
		alive[i] = d.msg
	}
	defer g.keepAlive(alive)()
	// Each message carries its ingress row to the stage that ends its way
	// through the chain, which writes it with its own rows in one
	// transaction.
	per := time.Since(start) / time.Duration(len(batch))
	for _, d := range batch {
		g.carryIngress(d.env, per)
	}
	g.send(ctx, batch)
	g.metrics.batchSeconds.Observe(time.Since(start).Seconds())
}

// carryIngress adds the message's ingress row to what it carries (only its
// count when the stage-log mode leaves the row out).
func (g *Server) carryIngress(e *telemetryv1.Envelope, took time.Duration) {
	entry := ingressEntry(e, took)
	e.StageLog = append(e.StageLog, g.logs.Record(&entry))
}

func envelopes(batch []delivered) []*telemetryv1.Envelope {
	envs := make([]*telemetryv1.Envelope, len(batch))
	for i, d := range batch {
		envs[i] = d.env
	}
	return envs
}

// send calls the validator with the batch. A failure that may pass (a stage
// or Postgres unreachable, a deadline) NAKs the batch for redelivery with
// backoff; any other failure splits the batch so one bad message cannot hold
// back the rest, and a message that fails alone is dead-lettered.
func (g *Server) send(ctx context.Context, batch []delivered) {
	envs := envelopes(batch)
	if g.tracer != nil && g.spans != nil {
		// The batch's own trace holds the gRPC calls; it links to the
		// messages it carries, whose spans link back to the calls. The
		// links are made only when the batch is sampled.
		var span trace.Span
		ctx, span = g.tracer.Start(ctx, "gateway batch", trace.WithAttributes(attribute.Int("telemesh.batch_size", len(batch))))
		if span.IsRecording() {
			for _, d := range batch {
				span.AddLink(tracing.Link(d.env.GetTraceparent()))
			}
		}
		defer span.End()
	}
	cctx, cancel := context.WithTimeout(ctx, g.cfg.CallTimeout)
	resp, err := g.validator.Validate(cctx, &validatorv1.ValidateRequest{Envelopes: envs, WireVersion: envelope.WireVersion})
	cancel()
	if err == nil && len(resp.GetOutcomes()) != len(batch) {
		err = status.Errorf(codes.Internal, "validator answered %d outcomes for %d messages", len(resp.GetOutcomes()), len(batch))
	}
	if err != nil {
		trace.SpanFromContext(ctx).SetStatus(otelcodes.Error, err.Error())
		if transient(err) {
			g.retryLater(ctx, batch, err)
			return
		}
		if len(batch) > 1 {
			hold(batch)
			mid := len(batch) / 2
			g.send(ctx, batch[:mid])
			g.send(ctx, batch[mid:])
			return
		}
		g.deadLetter(ctx, batch[0], reason.Rejected, fmt.Sprintf("rejected by the chain: %v", err))
		return
	}
	g.writeHeld(ctx, batch, resp.GetOutcomes())
	for i, o := range resp.GetOutcomes() {
		g.metrics.outcomes.WithLabelValues(envelope.StatusName(o.GetStatus())).Inc()
		if envelope.Terminal(o.GetStatus()) {
			batch[i].spans.End(batch[i].i, o)
			_ = batch[i].msg.Ack()
			continue
		}
		g.retryLater(ctx, batch[i:i+1], fmt.Errorf("outcome %s is not terminal: %s", o.GetStatus(), o.GetReason()))
	}
}

// hold takes the rows each message of a rejected batch carries off it
// before the batch is split. The stages of the chain commit on their own,
// so a call that failed may still have finished some of its messages, and
// written the rows they carried; sent again with each half, those rows
// would be written again at every split. The halves go without them, and
// [Server.writeHeld] writes each message's rows once its outcome shows
// they were not written yet.
func hold(batch []delivered) {
	for i := range batch {
		if d := &batch[i]; d.held == nil {
			d.held, d.env.StageLog = d.env.GetStageLog(), nil
		}
	}
}

// writeHeld writes the rows held off the messages of a split batch (see
// [hold]) once their outcomes are in. A message that comes back a
// duplicate of itself reached persist in a call that failed, and its rows
// were written with it then. A message that is not finished is NAKed, and
// its rows are lost with the attempt, as they would have been down the
// chain. Postgres may well be why the batch failed, so a write that fails
// is only logged: the outcome is what decides the ack.
func (g *Server) writeHeld(ctx context.Context, batch []delivered, outcomes []*telemetryv1.Outcome) {
	b := g.logs.Batch()
	for i, o := range outcomes {
		d := &batch[i]
		if len(d.held) == 0 || !envelope.Terminal(o.GetStatus()) {
			continue
		}
		id := envelope.ParseUUID(d.env.GetMessageId())
		if o.GetStatus() == telemetryv1.MessageStatus_MESSAGE_STATUS_DUPLICATE && envelope.ParseUUID(o.GetMessageId()) == id {
			continue
		}
		b.AddCarried(id, d.env.GetDedupeKey(), d.held...)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := b.Write(wctx, g.pool); err != nil {
		g.logger.Warn("could not record the ingress rows of a split batch", "messages", len(batch), "err", err)
	}
}

// transient reports whether a failed call may succeed when retried.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.Unknown:
		return true
	}
	return false
}

// retryLater NAKs messages with a delay that grows with their deliveries;
// a message on its last delivery is dead-lettered instead, so it is recorded
// rather than dropped.
func (g *Server) retryLater(ctx context.Context, batch []delivered, cause error) {
	g.logger.Warn("batch not finished; NAKed for redelivery", "messages", len(batch), "err", cause)
	retrying := make([]stagelog.Entry, 0, len(batch))
	for _, d := range batch {
		attempt := int(d.env.GetDeliveryAttempt())
		if g.cfg.MaxDeliver > 0 && attempt >= g.cfg.MaxDeliver {
			g.deadLetter(ctx, d, reason.DeadLettered, fmt.Sprintf("dead-lettered after %d deliveries: %v", attempt, cause))
			continue
		}
		delay := time.Second
		if len(g.cfg.Backoff) > 0 {
			delay = g.cfg.Backoff[min(attempt-1, len(g.cfg.Backoff)-1)]
		}
		g.metrics.naks.Inc()
		d.spans.Fail(d.i, "redelivered in "+delay.String()+": "+cause.Error())
		_ = d.msg.NakWithDelay(delay)
		retrying = append(retrying, stagelog.Entry{
			MessageID: envelope.ParseUUID(d.env.GetMessageId()), DedupeKey: d.env.GetDedupeKey(), Stage: envelope.StageIngress,
			Status: stagelog.StatusRetrying, Attempt: attempt, Code: reason.Transient,
			Errors: map[string]any{"reason": bound.Text(cause.Error(), bound.MaxReasonBytes), "retry_in": delay.String()},
		})
	}
	// The rows the messages carried are lost with the attempt; this one
	// says why it ended. Postgres may well be the cause, so a write that
	// fails is only logged: the redelivery is what matters.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := g.logs.Write(wctx, g.pool, retrying); err != nil {
		g.logger.Warn("could not record the retrying rows of a NAKed batch", "messages", len(retrying), "err", err)
	}
}

// deadLetter records a message that cannot be processed as failed_terminal
// with its reason, the reason's code and its raw payload, then terminates
// its delivery. Every field
// of the record is bounded and cleaned, so Postgres cannot refuse it for
// what the message holds. If even the record cannot be written the message
// is NAKed, never dropped.
func (g *Server) deadLetter(ctx context.Context, d delivered, code, why string) {
	e := d.env
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rec := g.deadLetterRecord(e, why)
	err := g.insertDeadLetter(dctx, rec)
	if pg.Refused(err) {
		// Only a reference can still be refused (an organization deleted
		// since the catalog was read): keep the record without it.
		g.logger.Warn("dead letter refused; recording it without its organization and device", "dedupe_key", rec.key, "err", err)
		rec.org, rec.device = nil, nil
		rec.reason = bound.Text(rec.reason+" (recorded without organization and device: "+pg.Reason(err)+")", bound.MaxReasonBytes)
		err = g.insertDeadLetter(dctx, rec)
	}
	// A failure inside the chain names its error id; the stage row keeps
	// it apart so an operator finds the stage's log line with its cause.
	errorID := grpcx.ErrorIDIn(why)
	if err == nil {
		errs := map[string]any{"reason": rec.reason}
		if errorID != "" {
			errs["error_id"] = errorID
		}
		err = g.logs.Write(dctx, g.pool, []stagelog.Entry{{
			MessageID: envelope.ParseUUID(e.GetMessageId()), DedupeKey: rec.key, Stage: envelope.StageIngress,
			Status: stagelog.StatusFailed, Attempt: int(e.GetDeliveryAttempt()), Errors: errs, Code: code,
			Input: map[string]any{"subject": rec.subject, "payload_bytes": len(e.GetPayload())},
		}})
		if pg.Refused(err) {
			// The message row holds the record; a stage row Postgres will
			// never take must not keep the message in redelivery.
			g.logger.Error("dead letter recorded without its stage row, which was refused", "dedupe_key", rec.key, "err", err)
			err = nil
		}
	}
	if err != nil {
		g.logger.Error("could not record a dead letter; leaving it for redelivery", "dedupe_key", rec.key, "err", err)
		d.spans.Fail(d.i, "dead letter not recorded, redelivered: "+err.Error())
		_ = d.msg.NakWithDelay(30 * time.Second)
		return
	}
	d.spans.Fail(d.i, rec.reason)
	g.metrics.deadLettered.Inc()
	g.logger.WarnContext(tracing.ContextWith(ctx, e.GetTraceparent()), "message dead-lettered", "message_id", e.GetMessageId(), "dedupe_key", rec.key, "reason", rec.reason, "error_id", errorID)
	_ = d.msg.Term()
}

// deadLetterRow is the ingestion_messages row of a dead letter.
type deadLetterRow struct {
	id                                  uuid.UUID
	org, device                         any
	subject, sourceID, key, contentType string
	reason                              string
	traceID                             string
	payload                             bound.Payload
	sequence                            int64
	attempts                            int32
	receivedAt                          time.Time
}

// deadLetterRecord bounds every field of the envelope for the record.
func (g *Server) deadLetterRecord(e *telemetryv1.Envelope, reason string) deadLetterRow {
	id := envelope.ParseUUID(e.GetMessageId())
	if id == uuid.Nil {
		id = uuid.Must(uuid.NewV7())
	}
	p := bound.StorePayload(e.GetPayload(), g.cfg.StoredPayloadBytes)
	reason = bound.Text(reason, bound.MaxReasonBytes)
	if note := p.Note(); note != "" {
		reason += "; " + note
	}
	received := envelope.Time(e.GetReceivedAt())
	if received.IsZero() {
		received = time.Now()
	}
	return deadLetterRow{
		id: id, org: nullUUID(e.GetOrganizationId()), device: nullUUID(e.GetDeviceUuid()),
		subject:     bound.Text(e.GetSourceSubject(), MaxSubjectBytes),
		sourceID:    bound.Text(e.GetSourceMessageId(), MaxMessageIDBytes),
		key:         bound.Key(e.GetDedupeKey(), bound.MaxKeyBytes),
		contentType: bound.Text(e.GetContentType(), 255),
		reason:      reason, payload: p, traceID: tracing.TraceID(e.GetTraceparent()),
		sequence: int64(min(e.GetStreamSequence(), math.MaxInt64)), attempts: int32(min(max(e.GetDeliveryAttempt(), 1), math.MaxInt32)),
		receivedAt: received,
	}
}

func (g *Server) insertDeadLetter(ctx context.Context, r deadLetterRow) error {
	var size, sum any
	if r.payload.Cut() {
		size, sum = r.payload.Size, r.payload.SHA256
	}
	_, err := g.pool.Exec(ctx, `insert into ingestion_messages (id, organization_id, device_id, source_subject,
			source_message_id, dedupe_key, stream_sequence, delivery_attempts, raw_payload, raw_payload_bytes, raw_payload_sha256,
			content_type, status, halted_stage, error_summary, received_at, processed_at, trace_id)
		values ($1, $2, $3, $4, nullif($5, ''), $6, $7, $8, $9, $10, $11, nullif($12, ''), 'failed_terminal', 'ingress', $13, $14, now(), nullif($15, ''))
		on conflict (dedupe_key) do nothing`,
		r.id, r.org, r.device, r.subject, r.sourceID, r.key, r.sequence, r.attempts,
		r.payload.Kept, size, sum, r.contentType, r.reason, r.receivedAt, r.traceID)
	return err
}

func nullUUID(s string) any {
	if u := envelope.ParseUUID(s); u != uuid.Nil {
		return u
	}
	return nil
}

// ingressEntry is the ingress stage row of a message.
func ingressEntry(e *telemetryv1.Envelope, took time.Duration) stagelog.Entry {
	entry := stagelog.Entry{
		MessageID: envelope.ParseUUID(e.GetMessageId()), DedupeKey: e.GetDedupeKey(), Stage: envelope.StageIngress,
		Status: stagelog.StatusCompleted, Duration: took, Attempt: int(e.GetDeliveryAttempt()),
	}
	switch e.GetStatus() {
	case telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL:
		entry.Status = stagelog.StatusHalted
		entry.Errors = map[string]any{"reason": e.GetReason()}
		entry.Code = e.GetReasonCode()
		entry.Input = map[string]any{"subject": e.GetSourceSubject(), "payload": string(e.GetPayload())}
	case telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED:
		entry.Status = stagelog.StatusParked
		entry.Errors = map[string]any{"reason": e.GetReason()}
		entry.Code = e.GetReasonCode()
	}
	return entry
}
