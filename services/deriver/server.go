// Package deriver is the mutate and derive stages: it applies each
// parameter's mutation expression, then computes derived parameters in
// dependency order, and forwards the batch to the persister.
package deriver

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
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
	"github.com/telemesh/telemesh/internal/reason"
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
	programs map[uuid.UUID]*compiled
}

// compiled is a topic's program and the definitions it had to leave out
// because they are not valid JSON, with the reason.
type compiled struct {
	program         *Program
	brokenDerived   map[string]string
	brokenMutations map[string]string
}

// apply runs the program and reports the left-out definitions, so one
// broken definition costs its own value, never the topic's messages.
func (c *compiled) apply(extracted map[string]any) Result {
	res := c.program.Apply(extracted)
	for k, why := range c.brokenDerived {
		if res.Unresolved == nil {
			res.Unresolved = map[string]Unresolved{}
		}
		res.Unresolved[k] = Unresolved{Reason: ReasonEvaluationError, Detail: why}
	}
	for k, why := range c.brokenMutations {
		if _, ok := extracted[k]; !ok {
			continue
		}
		if res.MutationErrors == nil {
			res.MutationErrors = map[string]string{}
		}
		res.MutationErrors[k] = why
	}
	return res
}

// compile compiles a topic's definitions, leaving out the ones whose
// expressions are not JSON.
func compileTopic(params []catalog.Parameter, derived []catalog.Derived) (*compiled, error) {
	c := &compiled{}
	p, err := Compile(params, derived)
	if err == nil {
		c.program = p
		return c, nil
	}
	c.brokenDerived, c.brokenMutations = map[string]string{}, map[string]string{}
	var okParams []catalog.Parameter
	for _, prm := range params {
		if len(prm.Mutation) > 0 && !json.Valid(prm.Mutation) {
			c.brokenMutations[prm.Key] = "mutation expression is not valid JSON"
			prm.Mutation = nil
		}
		okParams = append(okParams, prm)
	}
	var okDerived []catalog.Derived
	for _, d := range derived {
		if !json.Valid(d.Expression) {
			c.brokenDerived[d.Key] = "expression is not valid JSON"
			continue
		}
		okDerived = append(okDerived, d)
	}
	if c.program, err = Compile(okParams, okDerived); err != nil {
		return nil, err
	}
	return c, nil
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
func (srv *Server) program(topicID uuid.UUID) (*compiled, error) {
	snap := srv.catalog.Snapshot()
	if snap == nil {
		return nil, errCatalogNotLoaded
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.compiled != snap {
		srv.compiled, srv.programs = snap, map[uuid.UUID]*compiled{}
	}
	if p, ok := srv.programs[topicID]; ok {
		return p, nil
	}
	var (
		p   *compiled
		err error
	)
	if t := snap.Topics[topicID]; t != nil {
		p, err = compileTopic(t.Parameters, t.Derived)
	} else {
		p, err = compileTopic(nil, nil)
	}
	if err != nil {
		return nil, err
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
		res := p.apply(extracted)
		e.Mutated = value.MapToProto(res.Mutated)
		e.Derived = make(map[string]*telemetryv1.DerivedValue, len(res.Derived)+len(res.Unresolved))
		for k, v := range res.Derived {
			e.Derived[k] = &telemetryv1.DerivedValue{Result: &telemetryv1.DerivedValue_Value{Value: value.ToProto(v)}}
		}
		for k, u := range res.Unresolved {
			e.Derived[k] = &telemetryv1.DerivedValue{Result: &telemetryv1.DerivedValue_Unresolved{Unresolved: unresolvedProto(u)}}
		}
		took := time.Since(start)
		id := envelope.ParseUUID(e.GetMessageId())
		mutate := stagelog.Entry{MessageID: id, DedupeKey: e.GetDedupeKey(), Stage: envelope.StageMutate,
			Status: stagelog.StatusCompleted, Duration: took / 2, Attempt: int(e.GetDeliveryAttempt()),
			ChangeSet: changed(extracted, res.Mutated)}
		if len(res.MutationErrors) > 0 {
			mutate.Status = stagelog.StatusFailed
			mutate.Errors = res.MutationErrors
			mutate.Code = reason.EvaluationError
			mutate.Input = jsonValues(extracted)
		}
		derive := stagelog.Entry{MessageID: id, DedupeKey: e.GetDedupeKey(), Stage: envelope.StageDerive,
			Status: stagelog.StatusCompleted, Duration: took / 2, Attempt: int(e.GetDeliveryAttempt()),
			ChangeSet: jsonValues(res.Derived)}
		if len(res.Unresolved) > 0 {
			derive.Status = stagelog.StatusUnresolved
			derive.Errors = unresolvedJSON(res.Unresolved)
			derive.Code = unresolvedCode(res.Unresolved)
			derive.Input = jsonValues(res.Mutated)
		}
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
