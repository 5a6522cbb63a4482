// Package deriver is the mutate and derive stages: it applies each
// parameter's mutation expression, then computes derived parameters in
// dependency order, and forwards the batch to the persister.
package deriver

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"

	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/envelope"
	reasoncode "github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/tracing"
	"github.com/telemesh/telemesh/internal/value"
)

// Server is the gRPC handler of the mutate and derive stages.
type Server struct {
	deriverv1.UnimplementedDeriverServiceServer
	catalog   *catalog.Cache
	persister persisterv1.PersisterServiceClient
	logs      *stagelog.Writer
	logger    *slog.Logger

	mutateSpans, deriveSpans *tracing.Messages

	mu       sync.Mutex
	compiled *catalog.Snapshot
	programs map[uuid.UUID]*topicProgram
}

// topicProgram is a topic's compiled definitions and its parameters' data
// types.
type topicProgram struct {
	*Program
	types map[string]string
}

// New returns the deriver.
func New(cat *catalog.Cache, persister persisterv1.PersisterServiceClient, logs *stagelog.Writer, logger *slog.Logger) *Server {
	return &Server{catalog: cat, persister: persister, logs: logs, logger: logger}
}

// WithTracing gives each message a mutate span and, inside it, a derive
// span in its trace.
func (srv *Server) WithTracing(p *tracing.Provider) *Server {
	srv.mutateSpans, srv.deriveSpans = p.Messages(envelope.StageMutate), p.Messages(envelope.StageDerive)
	return srv
}

// Register registers the stage's service on s.
func (srv *Server) Register(s grpc.ServiceRegistrar) {
	deriverv1.RegisterDeriverServiceServer(s, srv)
}

// program returns the compiled definitions of a topic, compiling them once
// per catalog snapshot.
func (srv *Server) program(topicID uuid.UUID) (*topicProgram, error) {
	snap := srv.catalog.Snapshot()
	if snap == nil {
		return nil, errCatalogNotLoaded
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.compiled != snap {
		srv.compiled, srv.programs = snap, map[uuid.UUID]*topicProgram{}
	}
	if p, ok := srv.programs[topicID]; ok {
		return p, nil
	}
	p := &topicProgram{types: map[string]string{}}
	if t := snap.Topics[topicID]; t != nil {
		p.Program = compileTopic(t.Parameters, t.Derived)
		for _, prm := range t.Parameters {
			p.types[prm.Key] = prm.DataType
		}
	} else {
		p.Program = compileTopic(nil, nil)
	}
	srv.programs[topicID] = p
	return p, nil
}

// typed gives each value the Go type its parameter's data type has when the
// validator extracts it (see validator.Checker.Check): JSON tells 12 from
// 12.0 no more than a string from a json parameter holding one.
func typed(values map[string]any, types map[string]string) {
	for k, v := range values {
		switch types[k] {
		case "decimal":
			if n, ok := v.(int64); ok {
				values[k] = float64(n)
			}
		case "integer":
			if f, ok := v.(float64); ok && f == math.Trunc(f) && math.Abs(f) < 1<<63 {
				values[k] = int64(f)
			}
		case "json":
			if _, ok := v.(json.RawMessage); !ok {
				values[k] = json.RawMessage(value.AppendValue(nil, v))
			}
		}
	}
}

// Derive mutates and derives every message of the batch, then sends the
// batch to the persister.
func (srv *Server) Derive(ctx context.Context, req *deriverv1.DeriveRequest) (resp *deriverv1.DeriveResponse, err error) {
	envs := req.GetEnvelopes()
	if err := envelope.CheckBatch(req.GetWireVersion(), envs); err != nil {
		return nil, err
	}
	// Mutations and derivations are evaluated together, so the derive span
	// sits inside the mutate span; both end with the outcome that comes
	// back from the persister.
	mutateSpans := srv.mutateSpans.Start(ctx, envs)
	deriveSpans := srv.deriveSpans.Children(mutateSpans, envs)
	defer func() {
		deriveSpans.EndAll(resp.GetOutcomes(), err)
		mutateSpans.EndAll(resp.GetOutcomes(), err)
	}()
	for i, e := range envs {
		start := time.Now()
		p, err := srv.program(envelope.ParseUUID(e.GetTopicId()))
		if err != nil {
			return nil, fmt.Errorf("topic %s: %w", e.GetTopicId(), err)
		}
		extracted := map[string]any{}
		if v := e.GetValues(); v != "" {
			if extracted, err = value.ParseObject(v); err != nil {
				return nil, envelope.BatchError{Index: i, Reason: fmt.Sprintf("values: %v", err)}
			}
			typed(extracted, p.types)
		}
		res := p.Apply(extracted)
		mutate, derive := record(e, extracted, res, time.Since(start))
		mutateSpans.SetStage(i, mutate.Status, mutate.Code)
		deriveSpans.SetStage(i, derive.Status, derive.Code)
		if req.GetDryRun() {
			continue
		}
		for _, entry := range []*stagelog.Entry{&mutate, &derive} {
			e.StageLog = append(e.StageLog, srv.logs.Record(entry))
		}
	}
	persisted, err := srv.persister.Persist(ctx, &persisterv1.PersistRequest{Envelopes: envs, DryRun: req.GetDryRun(), WireVersion: envelope.WireVersion})
	if err != nil {
		return nil, fmt.Errorf("persister: %w", err)
	}
	return &deriverv1.DeriveResponse{Outcomes: persisted.GetOutcomes()}, nil
}

// record writes a message's result into its envelope (values, transformed
// and unresolved) and returns its mutate and derive stage-log entries.
//
// A value whose mutation failed is carried in the envelope's unresolved
// values, with reason evaluation_error and the failure as the detail, and
// is absent from the mutated values. The persister stores them in
// unresolved_values beside the unresolved derived values, so one column answers "which values of this message are missing,
// and why", and the publisher sends them in the event's unresolved values.
// Keeping the extracted value instead would store, publish and derive from
// a value the definition says is wrong (an uncalibrated reading) with
// nothing to tell it apart, which is the silent pass-through this avoids.
// The message still completes: its other values are good and stored, and
// the failure belongs to the definition, so its reason (error_summary)
// names each failed mutation and the mutate stage is logged as failed.
func record(e *telemetryv1.Envelope, extracted map[string]any, res Result, took time.Duration) (mutate, derive stagelog.Entry) {
	failed := mutationFailures(res.MutationErrors)
	transformed := make(map[string]any, len(res.Mutated)+len(res.Derived))
	for k, v := range res.Mutated {
		transformed[k] = v
	}
	for k, v := range res.Derived {
		transformed[k] = v
	}
	unresolved := make(map[string]any, len(res.Unresolved)+len(failed))
	for k, u := range res.Unresolved {
		unresolved[k] = unresolvedValue(u)
	}
	for k, u := range failed {
		unresolved[k] = unresolvedValue(u)
	}
	e.Values, e.Transformed, e.Unresolved = value.Object(res.Mutated), value.Object(transformed), value.Object(unresolved)

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

// unresolvedValue is an unresolved value as device_telemetry_logs'
// unresolved_values holds it: {"reason": ..., "missing_inputs": [...],
// "cycle": [...], "detail": ...}.
func unresolvedValue(u Unresolved) json.RawMessage {
	b, err := json.Marshal(envelope.Unresolved{Reason: string(u.Reason), MissingInputs: u.MissingInputs, Cycle: u.Cycle, Detail: u.Detail})
	if err != nil {
		return json.RawMessage(`{"reason":"evaluation_error"}`)
	}
	return b
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
