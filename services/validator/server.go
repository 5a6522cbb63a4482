// Package validator is the validate stage: it decodes each payload, extracts
// and checks its parameters, stops invalid messages, messages of inactive
// devices and duplicates, and forwards the rest to the deriver. Stopped
// messages go straight to the persister so the evidence is kept.
package validator

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/tracing"
	"github.com/telemesh/telemesh/internal/value"
)

// Server is the gRPC handler of the validate stage.
type Server struct {
	validatorv1.UnimplementedValidatorServiceServer
	checker   *Checker
	catalog   *catalog.Cache
	pool      *pgxpool.Pool
	deriver   deriverv1.DeriverServiceClient
	persister persisterv1.PersisterServiceClient
	logs      *stagelog.Writer
	logger    *slog.Logger
	spans     *tracing.Messages
}

// New returns the validate stage.
func New(checker *Checker, cat *catalog.Cache, pool *pgxpool.Pool, deriver deriverv1.DeriverServiceClient, persister persisterv1.PersisterServiceClient, logs *stagelog.Writer, logger *slog.Logger) *Server {
	return &Server{checker: checker, catalog: cat, pool: pool, deriver: deriver, persister: persister, logs: logs, logger: logger}
}

// WithTracing gives each message a validate span in its trace.
func (srv *Server) WithTracing(p *tracing.Provider) *Server {
	srv.spans = p.Messages(envelope.StageValidate)
	return srv
}

// Register registers the stage's service on s.
func (srv *Server) Register(s grpc.ServiceRegistrar) {
	validatorv1.RegisterValidatorServiceServer(s, srv)
}

// Validate validates a batch and sends each message on: valid ones to the
// deriver, stopped ones to the persister.
func (srv *Server) Validate(ctx context.Context, req *validatorv1.ValidateRequest) (resp *validatorv1.ValidateResponse, err error) {
	start := time.Now()
	envs := req.GetEnvelopes()
	if err := envelope.CheckBatch(req.GetWireVersion(), envs); err != nil {
		return nil, err
	}
	// Each message's span ends with the outcome that comes back up the
	// chain, so it says how the message ended, not only what this stage did.
	spans := srv.spans.Start(ctx, envs)
	defer func() { spans.EndAll(resp.GetOutcomes(), err) }()
	snap := srv.catalog.Snapshot()
	if snap == nil {
		return nil, errCatalogNotLoaded
	}
	dups, err := srv.duplicates(ctx, envs)
	if err != nil {
		return nil, err
	}

	outcomes := make([]*telemetryv1.Outcome, len(envs))
	entries := make([]stagelog.Entry, len(envs))
	// A duplicate goes no further: its rows, the ones it carried included,
	// are written here.
	stopped := srv.logs.Batch()
	var toDerive, toPersist, duplicates []int
	for i, e := range envs {
		entry := &entries[i]
		*entry = stagelog.Entry{
			MessageID: envelope.ParseUUID(e.GetMessageId()), DedupeKey: e.GetDedupeKey(), Stage: envelope.StageValidate,
			Status: stagelog.StatusCompleted, Attempt: int(e.GetDeliveryAttempt()),
		}
		switch {
		case envelope.Halted(e):
			// Stopped at ingress (unknown topic, not JSON, parked): carried
			// on as evidence without a validate row of its own.
			entry.Stage = ""
			toPersist = append(toPersist, i)
			continue
		case dups[e.GetDedupeKey()].id != "":
			d := dups[e.GetDedupeKey()]
			outcomes[i] = &telemetryv1.Outcome{
				MessageId: d.id, DedupeKey: e.GetDedupeKey(), Status: telemetryv1.MessageStatus_MESSAGE_STATUS_DUPLICATE,
				HaltedStage: telemetryv1.Stage_STAGE_VALIDATE, Reason: fmt.Sprintf("duplicate of message %s (%s)", d.id, d.status),
			}
			entry.Status = stagelog.StatusDuplicate
			entry.Errors = map[string]any{"duplicate_of": d.id, "original_status": d.status}
			entry.Code = reason.Duplicate
			duplicates = append(duplicates, i)
			continue
		}
		values := srv.check(e, snap)
		if e.GetRecordedAt() == nil {
			e.RecordedAt = e.GetReceivedAt()
		}
		if envelope.Halted(e) {
			entry.ChangeSet = map[string]any{"extracted": jsonValues(values)}
			entry.Status = stagelog.StatusHalted
			entry.Errors = map[string]any{"reason": e.GetReason(), "validation_errors": envelope.ValidationErrors(e.GetValidationErrors())}
			entry.Code = e.GetReasonCode()
			entry.Input = map[string]any{"subject": e.GetSourceSubject(), "payload": string(e.GetPayload())}
			toPersist = append(toPersist, i)
		} else {
			toDerive = append(toDerive, i)
		}
	}
	took := time.Since(start) / time.Duration(max(len(envs), 1))
	if !req.GetDryRun() {
		for i, e := range envs {
			entry := &entries[i]
			if entry.Stage == "" {
				continue
			}
			spans.SetStage(i, entry.Status, entry.Code)
			entry.Duration = took
			e.StageLog = append(e.StageLog, srv.logs.Record(entry))
		}
		for _, i := range duplicates {
			stopped.AddCarried(envelope.ParseUUID(envs[i].GetMessageId()), envs[i].GetDedupeKey(), envs[i].GetStageLog()...)
		}
		if err := stopped.Write(ctx, srv.pool); err != nil {
			return nil, err
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	if len(toDerive) > 0 {
		g.Go(func() error {
			resp, err := srv.deriver.Derive(gctx, &deriverv1.DeriveRequest{Envelopes: pick(envs, toDerive), DryRun: req.GetDryRun(), WireVersion: envelope.WireVersion})
			if err != nil {
				return fmt.Errorf("deriver: %w", err)
			}
			return place(outcomes, toDerive, resp.GetOutcomes())
		})
	}
	if len(toPersist) > 0 {
		g.Go(func() error {
			resp, err := srv.persister.Persist(gctx, &persisterv1.PersistRequest{Envelopes: pick(envs, toPersist), DryRun: req.GetDryRun(), WireVersion: envelope.WireVersion})
			if err != nil {
				return fmt.Errorf("persister: %w", err)
			}
			return place(outcomes, toPersist, resp.GetOutcomes())
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return &validatorv1.ValidateResponse{Outcomes: outcomes}, nil
}

// check validates one envelope in place: it sets the extracted values, the
// recorded time, and for a stopped message its status, reason and errors.
// It returns the extracted values.
func (srv *Server) check(e *telemetryv1.Envelope, snap *catalog.Snapshot) map[string]any {
	topic := snap.Topics[envelope.ParseUUID(e.GetTopicId())]
	if topic == nil {
		e.Status = telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL
		e.HaltedStage = telemetryv1.Stage_STAGE_VALIDATE
		e.Reason = fmt.Sprintf("topic %q of %s is no longer defined", e.GetTopic(), e.GetSourceSubject())
		e.ReasonCode = reason.UnknownTopic
		return nil
	}
	values, issues := srv.checker.Check(e.GetPayload(), topic.Parameters)
	e.Values = value.Object(values)
	if t, ok := RecordedAt(e.GetPayload()); ok {
		e.RecordedAt = timestamppb.New(t)
	}
	if !e.GetDeviceActive() {
		e.Status = telemetryv1.MessageStatus_MESSAGE_STATUS_INACTIVE_SKIPPED
		e.ProcessingState = telemetryv1.ProcessingState_PROCESSING_STATE_INACTIVE_SKIPPED
		e.HaltedStage = telemetryv1.Stage_STAGE_VALIDATE
		e.Reason = fmt.Sprintf("device %s is inactive", deviceName(e))
		e.ReasonCode = reason.Inactive
		return values
	}
	if len(issues) == 0 {
		return values
	}
	reasons := make([]string, len(issues))
	for i, is := range issues {
		e.ValidationErrors = append(e.ValidationErrors, &telemetryv1.ValidationError{
			Parameter: is.Parameter, Code: is.Code, Message: is.Message, Critical: is.Critical,
		})
		p := is.Parameter
		if p == "" {
			p = "payload"
		}
		reasons[i] = p + ": " + is.Code
		if is.Critical {
			reasons[i] += " (critical)"
		}
	}
	e.Status = telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_VALIDATION
	e.ProcessingState = telemetryv1.ProcessingState_PROCESSING_STATE_INVALID
	e.HaltedStage = telemetryv1.Stage_STAGE_VALIDATE
	e.Reason = "validation failed: " + strings.Join(reasons, "; ")
	e.ReasonCode = primaryCode(issues)
	return values
}

// primaryCode is the code a message that broke several rules is counted
// under: the first critical issue's, else the first issue's. Every issue
// keeps its own code in the validation errors.
func primaryCode(issues []Issue) string {
	for _, is := range issues {
		if is.Critical {
			return is.Code
		}
	}
	return issues[0].Code
}

func deviceName(e *telemetryv1.Envelope) string {
	if e.GetDeviceExternalId() != "" {
		return e.GetDeviceExternalId()
	}
	return e.GetDeviceUuid()
}

type original struct{ id, status string }

// duplicatesSQL finds the stored originals of a batch's dedupe keys.
const duplicatesSQL = `select dedupe_key, id::text, status from ingestion_messages
	where dedupe_key = any($1) and status not in ('parked', 'queued')`

// duplicates finds the messages of the batch whose original already reached
// persist. A parked or queued original has not: it is resumed, never called
// a duplicate.
func (srv *Server) duplicates(ctx context.Context, envs []*telemetryv1.Envelope) (map[string]original, error) {
	keys := make([]string, 0, len(envs))
	for _, e := range envs {
		if !envelope.Halted(e) {
			keys = append(keys, e.GetDedupeKey())
		}
	}
	out := map[string]original{}
	if len(keys) == 0 {
		return out, nil
	}
	rows, err := srv.pool.Query(ctx, duplicatesSQL, pg.PlanEachTime, keys)
	if err != nil {
		return nil, fmt.Errorf("duplicate check: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			k string
			o original
		)
		if err := rows.Scan(&k, &o.id, &o.status); err != nil {
			return nil, fmt.Errorf("duplicate check: %w", err)
		}
		out[k] = o
	}
	return out, rows.Err()
}

func pick(envs []*telemetryv1.Envelope, idx []int) []*telemetryv1.Envelope {
	out := make([]*telemetryv1.Envelope, len(idx))
	for j, i := range idx {
		out[j] = envs[i]
	}
	return out
}

func place(outcomes []*telemetryv1.Outcome, idx []int, got []*telemetryv1.Outcome) error {
	if len(got) != len(idx) {
		return fmt.Errorf("%w: %d outcomes for %d envelopes", errOutcomeCount, len(got), len(idx))
	}
	for j, i := range idx {
		outcomes[i] = got[j]
	}
	return nil
}

// jsonValues returns the values as a stage-log change set holds them.
func jsonValues(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = value.JSON(v)
	}
	return out
}
