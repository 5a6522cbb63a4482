package gateway

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/envelope"
)

// ErrIgnoredSubject is returned by Ingest for an internal or system subject.
var ErrIgnoredSubject = ignoredSubjectError{}

type ignoredSubjectError struct{}

func (ignoredSubjectError) Error() string {
	return "subject is internal, a system subject or a telemesh output; it is never ingested"
}

// InvalidInput marks the error as the caller's.
func (ignoredSubjectError) InvalidInput() bool { return true }

// Ingest sends one payload down the chain as if it had arrived on the
// subject. With dry_run it computes the outcome and writes nothing.
func (g *Server) Ingest(ctx context.Context, req *gatewayv1.IngestRequest) (*gatewayv1.IngestResponse, error) {
	if g.filter.Ignored(req.GetSubject()) {
		return nil, ErrIgnoredSubject
	}
	in := Incoming{Subject: req.GetSubject(), Payload: req.GetPayload(), HeaderMessageID: req.GetMessageId(), ReceivedAt: time.Now()}
	env := BuildEnvelope(in, g.catalog.Snapshot(), g.catalog.Switches(), g.epoch)
	if strings.HasPrefix(env.GetDedupeKey(), "seq:") {
		// No stream sequence here: without a usable message id every call
		// is a message of its own.
		env.DedupeKey = "ingest:" + uuid.Must(uuid.NewV7()).String()
	}
	envs := []*telemetryv1.Envelope{env}
	if !req.GetDryRun() {
		g.carryIngress(env, time.Since(in.ReceivedAt))
	}
	resp, err := g.validator.Validate(ctx, &validatorv1.ValidateRequest{Envelopes: envs, DryRun: req.GetDryRun(), WireVersion: envelope.WireVersion})
	if err != nil {
		return nil, fmt.Errorf("validator: %w", err)
	}
	if len(resp.GetOutcomes()) != 1 {
		return nil, fmt.Errorf("validator answered %d outcomes for one message", len(resp.GetOutcomes()))
	}
	out := resp.GetOutcomes()[0]
	if req.GetDryRun() && out.Envelope == nil {
		out.Envelope = env
	}
	return &gatewayv1.IngestResponse{Outcome: out}, nil
}
