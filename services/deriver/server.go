// Package deriver is the mutate and derive stages: it applies each
// parameter's mutation expression, then computes derived parameters in
// dependency order, and forwards the batch to the persister.
package deriver

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"

	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/envelope"
	reasoncode "github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/value"
)

// Server is the gRPC handler of the mutate and derive stages.
type Server struct {
	deriverv1.UnimplementedDeriverServiceServer
	catalog   *catalog.Cache
	pool      *pgxpool.Pool
	persister persisterv1.PersisterServiceClient
	logs      *stagelog.Writer
	logger    *slog.Logger

	mu       sync.Mutex
	compiled *catalog.Snapshot
	programs map[uuid.UUID]*Program
}

// New returns the deriver.
func New(cat *catalog.Cache, pool *pgxpool.Pool, persister persisterv1.PersisterServiceClient, logs *stagelog.Writer, logger *slog.Logger) *Server {
	return &Server{catalog: cat, pool: pool, persister: persister, logs: logs, logger: logger}
}

// Register registers the stage's service on s.
func (srv *Server) Register(s grpc.ServiceRegistrar) {
	deriverv1.RegisterDeriverServiceServer(s, srv)
}

// program returns the compiled definitions of a topic, compiling them once
// per catalog snapshot.
func (srv *Server) program(topicID uuid.UUID) (*Program, error) {
	snap := srv.catalog.Snapshot()
	if snap == nil {
		return nil, errCatalogNotLoaded
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.compiled != snap {
		srv.compiled, srv.programs = snap, map[uuid.UUID]*Program{}
	}
	if p, ok := srv.programs[topicID]; ok {
		return p, nil
	}
	var p *Program
	if t := snap.Topics[topicID]; t != nil {
		p = compileTopic(t.Parameters, t.Derived)
	} else {
		p = compileTopic(nil, nil)
	}
	srv.programs[topicID] = p
	return p, nil
}

// Derive mutates and derives every message of the batch, then sends the
// batch to the persister.
func (srv *Server) Derive(ctx context.Context, req *deriverv1.DeriveRequest) (*deriverv1.DeriveResponse, error) {
	envs := req.GetEnvelopes()
	entries := make([]stagelog.Entry, 0, 2*len(envs))
	for _, e := range envs {
		start := time.Now()
		p, err := srv.program(envelope.ParseUUID(e.GetTopicId()))
		if err != nil {
			return nil, fmt.Errorf("topic %s: %w", e.GetTopicId(), err)
		}
		extracted := value.MapFromProto(e.GetExtracted())
		res := p.Apply(extracted)
		mutate, derive := record(e, extracted, res, time.Since(start))
		entries = append(entries, mutate, derive)
	}
	if !req.GetDryRun() {
		if err := srv.logs.Write(ctx, srv.pool, entries); err != nil {
			return nil, err
		}
	}
	resp, err := srv.persister.Persist(ctx, &persisterv1.PersistRequest{Envelopes: envs, DryRun: req.GetDryRun()})
	if err != nil {
		return nil, fmt.Errorf("persister: %w", err)
	}
	return &deriverv1.DeriveResponse{Outcomes: resp.GetOutcomes()}, nil
}

// record writes a message's result into its envelope and returns its
// mutate and derive stage-log entries.
//
// A value whose mutation failed is carried as an unresolved entry of the
// envelope's derived values, with reason evaluation_error and the failure
// as the detail, and is absent from the mutated values. The persister
// stores those entries in unresolved_values beside the unresolved derived
// values, so one column answers "which values of this message are missing,
// and why", and the publisher sends them in the event's unresolved values.
// Keeping the extracted value instead would store, publish and derive from
// a value the definition says is wrong (an uncalibrated reading) with
// nothing to tell it apart, which is the silent pass-through this avoids.
// The message still completes: its other values are good and stored, and
// the failure belongs to the definition, so its reason (error_summary)
// names each failed mutation and the mutate stage is logged as failed.
func record(e *telemetryv1.Envelope, extracted map[string]any, res Result, took time.Duration) (mutate, derive stagelog.Entry) {
	e.Mutated = value.MapToProto(res.Mutated)
	e.Derived = make(map[string]*telemetryv1.DerivedValue, len(res.Derived)+len(res.Unresolved)+len(res.MutationErrors))
	for k, v := range res.Derived {
		e.Derived[k] = &telemetryv1.DerivedValue{Result: &telemetryv1.DerivedValue_Value{Value: value.ToProto(v)}}
	}
	for k, u := range res.Unresolved {
		e.Derived[k] = &telemetryv1.DerivedValue{Result: &telemetryv1.DerivedValue_Unresolved{Unresolved: unresolvedProto(u)}}
	}
	failed := mutationFailures(res.MutationErrors)
	for k, u := range failed {
		e.Derived[k] = &telemetryv1.DerivedValue{Result: &telemetryv1.DerivedValue_Unresolved{Unresolved: unresolvedProto(u)}}
	}

	id := envelope.ParseUUID(e.GetMessageId())
	mutate = stagelog.Entry{MessageID: id, DedupeKey: e.GetDedupeKey(), Stage: envelope.StageMutate,
		Status: stagelog.StatusCompleted, Duration: took / 2, Attempt: int(e.GetDeliveryAttempt()),
		ChangeSet: changed(extracted, res.Mutated)}
	if len(failed) > 0 {
		reason := mutationReason(res.MutationErrors)
		if e.GetReason() != "" {
			reason = e.GetReason() + "; " + reason
		}
		e.Reason = reason
		mutate.Status = stagelog.StatusFailed
		mutate.Errors = map[string]any{"reason": reason, "parameters": unresolvedJSON(failed)}
		mutate.Code = reasoncode.EvaluationError
		mutate.Input = jsonValues(extracted)
	}
	derive = stagelog.Entry{MessageID: id, DedupeKey: e.GetDedupeKey(), Stage: envelope.StageDerive,
		Status: stagelog.StatusCompleted, Duration: took / 2, Attempt: int(e.GetDeliveryAttempt()),
		ChangeSet: jsonValues(res.Derived)}
	if len(res.Unresolved) > 0 {
		derive.Status = stagelog.StatusUnresolved
		derive.Errors = unresolvedJSON(res.Unresolved)
		derive.Code = unresolvedCode(res.Unresolved)
		derive.Input = jsonValues(res.Mutated)
	}
	return mutate, derive
}

// mutationFailures turns failed mutations into unresolved values.
func mutationFailures(errs map[string]string) map[string]Unresolved {
	if len(errs) == 0 {
		return nil
	}
	out := make(map[string]Unresolved, len(errs))
	for k, why := range errs {
		out[k] = Unresolved{Reason: ReasonEvaluationError, Detail: why}
	}
	return out
}

// mutationReason is one line naming each failed mutation, by key, such as
// `temp_c: mutation {"*":[{"var":"value"},1.02]} reads "value", which is
// not defined`.
func mutationReason(errs map[string]string) string {
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + ": " + errs[k]
	}
	return strings.Join(parts, "; ")
}

func unresolvedProto(u Unresolved) *telemetryv1.Unresolved {
	r := telemetryv1.UnresolvedReason_UNRESOLVED_REASON_EVALUATION_ERROR
	switch u.Reason {
	case ReasonMissingInput:
		r = telemetryv1.UnresolvedReason_UNRESOLVED_REASON_MISSING_INPUT
	case ReasonCycle:
		r = telemetryv1.UnresolvedReason_UNRESOLVED_REASON_CYCLE
	}
	return &telemetryv1.Unresolved{Reason: r, MissingInputs: u.MissingInputs, Cycle: u.Cycle, Detail: u.Detail}
}

func unresolvedJSON(m map[string]Unresolved) map[string]envelope.Unresolved {
	out := make(map[string]envelope.Unresolved, len(m))
	for k, u := range m {
		out[k] = envelope.Unresolved{Reason: string(u.Reason), MissingInputs: u.MissingInputs, Cycle: u.Cycle, Detail: u.Detail}
	}
	return out
}

func jsonValues(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = value.JSON(v)
	}
	return out
}

// changed lists the values a mutation changed, as {key: [before, after]}.
func changed(before, after map[string]any) map[string]any {
	keys := make([]string, 0, len(after))
	for k := range after {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := map[string]any{}
	for _, k := range keys {
		if b, ok := before[k]; !ok || value.Describe(b) != value.Describe(after[k]) {
			out[k] = []any{value.JSON(before[k]), value.JSON(after[k])}
		}
	}
	return out
}
