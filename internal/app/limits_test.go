package app

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
)

// limitBytes is every stage's request limit in TestStageRequestLimits.
const limitBytes = 64 << 10

// TestStageRequestLimits sends requests straight to each stage: one over
// the size limit is ResourceExhausted, a malformed one InvalidArgument, and
// the stage then serves a good request.
func TestStageRequestLimits(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Process.MaxRecvMsgBytes = limitBytes })
	topic := f.topicID()
	// good is a valid envelope of meter-01, as the gateway would send it.
	good := func(status telemetryv1.MessageStatus) *telemetryv1.Envelope {
		id := uuid.Must(uuid.NewV7())
		return &telemetryv1.Envelope{
			MessageId: id.String(), DedupeKey: "limits:" + id.String(), SourceSubject: "devices.meter-01.telemetry",
			OrganizationId: f.acme.String(), OrganizationSlug: "acme", DeviceUuid: f.meter01.String(), DeviceExternalId: "meter-01",
			DeviceActive: true, Topic: "telemetry", TopicId: topic, DeliveryAttempt: 1,
			ReceivedAt: timestamppb.Now(), Payload: []byte(`{"temp_c": 1}`), ContentType: "application/json",
			Status: status, Extracted: map[string]*telemetryv1.Value{"temp_c": {Kind: &telemetryv1.Value_Number{Number: 1}}},
		}
	}
	big := func(status telemetryv1.MessageStatus) *telemetryv1.Envelope {
		e := good(status)
		e.Payload = []byte(`{"temp_c": 1, "pad": "` + strings.Repeat("x", limitBytes) + `"}`)
		return e
	}
	many := func() []*telemetryv1.Envelope {
		// Empty envelopes are 2 bytes each: 10,001 fit the size limit.
		envs := make([]*telemetryv1.Envelope, 10001)
		for i := range envs {
			envs[i] = &telemetryv1.Envelope{}
		}
		return envs
	}
	processing := telemetryv1.MessageStatus_MESSAGE_STATUS_PROCESSING
	completed := telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED

	dial := func(t *testing.T, stage string) *grpc.ClientConn {
		conn, err := grpc.NewClient(f.mesh.GRPC[stage], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	// call is one request to a stage; it returns the outcome status of the
	// first message, if any.
	type call func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error)
	validate := func(envs ...*telemetryv1.Envelope) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := validatorv1.NewValidatorServiceClient(conn).Validate(ctx, &validatorv1.ValidateRequest{Envelopes: envs})
			return firstStatus(r.GetOutcomes()), err
		}
	}
	derive := func(envs ...*telemetryv1.Envelope) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := deriverv1.NewDeriverServiceClient(conn).Derive(ctx, &deriverv1.DeriveRequest{Envelopes: envs})
			return firstStatus(r.GetOutcomes()), err
		}
	}
	persist := func(envs ...*telemetryv1.Envelope) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := persisterv1.NewPersisterServiceClient(conn).Persist(ctx, &persisterv1.PersistRequest{Envelopes: envs})
			return firstStatus(r.GetOutcomes()), err
		}
	}
	publish := func(envs ...*telemetryv1.Envelope) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := publisherv1.NewPublisherServiceClient(conn).Publish(ctx, &publisherv1.PublishRequest{Envelopes: envs})
			return firstStatus(r.GetOutcomes()), err
		}
	}
	ingest := func(req *gatewayv1.IngestRequest) call {
		return func(ctx context.Context, conn *grpc.ClientConn) (telemetryv1.MessageStatus, error) {
			r, err := gatewayv1.NewGatewayServiceClient(conn).Ingest(ctx, req)
			return r.GetOutcome().GetStatus(), err
		}
	}

	tests := []struct {
		stage string
		bad   map[string]struct {
			call call
			want codes.Code
		}
		// good makes a good request, new each time.
		good func() call
	}{
		{stage: Validator, good: func() call { return validate(good(processing)) }},
		{stage: Deriver, good: func() call { return derive(good(processing)) }},
		{stage: Persister, good: func() call { return persist(good(processing)) }},
		{stage: Publisher, good: func() call { return publish(good(completed)) }},
		{stage: Gateway, good: func() call {
			return ingest(&gatewayv1.IngestRequest{Subject: "devices.meter-01.telemetry", Payload: []byte(`{"temp_c": 1}`)})
		}},
	}
	type badCall = struct {
		call call
		want codes.Code
	}
	tests[0].bad = map[string]badCall{
		"over the size limit": {validate(big(processing)), codes.ResourceExhausted},
		"no envelopes":        {validate(), codes.InvalidArgument},
		"no message id":       {validate(without(good(processing), noMessageID)), codes.InvalidArgument},
		"no dedupe key":       {validate(without(good(processing), noDedupeKey)), codes.InvalidArgument},
		"an empty envelope":   {validate(&telemetryv1.Envelope{}), codes.InvalidArgument},
		"10,001 envelopes":    {validate(many()...), codes.InvalidArgument},
	}
	tests[1].bad = map[string]badCall{
		"over the size limit": {derive(big(processing)), codes.ResourceExhausted},
		"no envelopes":        {derive(), codes.InvalidArgument},
		"no message id":       {derive(without(good(processing), noMessageID)), codes.InvalidArgument},
		"no dedupe key":       {derive(without(good(processing), noDedupeKey)), codes.InvalidArgument},
		"an empty envelope":   {derive(&telemetryv1.Envelope{}), codes.InvalidArgument},
		"10,001 envelopes":    {derive(many()...), codes.InvalidArgument},
	}
	tests[2].bad = map[string]badCall{
		"over the size limit": {persist(big(processing)), codes.ResourceExhausted},
		"no envelopes":        {persist(), codes.InvalidArgument},
		"no message id":       {persist(without(good(processing), noMessageID)), codes.InvalidArgument},
		"no dedupe key":       {persist(without(good(processing), noDedupeKey)), codes.InvalidArgument},
		"an empty envelope":   {persist(&telemetryv1.Envelope{}), codes.InvalidArgument},
		"10,001 envelopes":    {persist(many()...), codes.InvalidArgument},
	}
	tests[3].bad = map[string]badCall{
		"over the size limit": {publish(big(completed)), codes.ResourceExhausted},
		"no envelopes":        {publish(), codes.InvalidArgument},
		"no message id":       {publish(without(good(completed), noMessageID)), codes.InvalidArgument},
		"no dedupe key":       {publish(without(good(completed), noDedupeKey)), codes.InvalidArgument},
		"an empty envelope":   {publish(&telemetryv1.Envelope{}), codes.InvalidArgument},
		"10,001 envelopes":    {publish(many()...), codes.InvalidArgument},
	}
	tests[4].bad = map[string]badCall{
		"over the size limit": {ingest(&gatewayv1.IngestRequest{Subject: "devices.meter-01.telemetry", Payload: big(processing).Payload}), codes.ResourceExhausted},
		"no subject":          {ingest(&gatewayv1.IngestRequest{Payload: []byte(`{"temp_c": 1}`)}), codes.InvalidArgument},
		"subject too long":    {ingest(&gatewayv1.IngestRequest{Subject: "devices." + strings.Repeat("x", 600) + ".telemetry"}), codes.InvalidArgument},
		"message id too long": {ingest(&gatewayv1.IngestRequest{Subject: "devices.meter-01.telemetry", MessageId: strings.Repeat("x", 300)}), codes.InvalidArgument},
		"a $SYS subject":      {ingest(&gatewayv1.IngestRequest{Subject: "$SYS.ACCOUNT.x.CONNECT"}), codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.stage, func(t *testing.T) {
			conn := dial(t, tt.stage)
			for name, bad := range tt.bad {
				t.Run(name, func(t *testing.T) {
					if _, err := bad.call(t.Context(), conn); status.Code(err) != bad.want {
						t.Errorf("got %v, want %s", err, bad.want)
					}
					// The same connection, and the stage, serve on.
					got, err := tt.good()(t.Context(), conn)
					if err != nil || got != completed {
						t.Errorf("good request after it: %v, %v; want completed", got, err)
					}
				})
			}
		})
	}
}

func noMessageID(e *telemetryv1.Envelope) { e.MessageId = "" }
func noDedupeKey(e *telemetryv1.Envelope) { e.DedupeKey = "" }

// without returns e changed by drop.
func without(e *telemetryv1.Envelope, drop func(*telemetryv1.Envelope)) *telemetryv1.Envelope {
	drop(e)
	return e
}

func firstStatus(outcomes []*telemetryv1.Outcome) telemetryv1.MessageStatus {
	if len(outcomes) == 0 {
		return telemetryv1.MessageStatus_MESSAGE_STATUS_UNSPECIFIED
	}
	return outcomes[0].GetStatus()
}
