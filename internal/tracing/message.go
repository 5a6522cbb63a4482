package tracing

import (
	"context"
	"encoding/hex"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/envelope"
)

// The attributes of a message span.
const (
	AttrMessageID  = attribute.Key("telemesh.message_id")
	AttrDedupeKey  = attribute.Key("telemesh.dedupe_key")
	AttrDevice     = attribute.Key("telemesh.device")
	AttrTopic      = attribute.Key("telemesh.topic")
	AttrSubject    = attribute.Key("messaging.destination.name")
	AttrOutcome    = attribute.Key("telemesh.outcome")
	AttrState      = attribute.Key("telemesh.processing_state")
	AttrHalted     = attribute.Key("telemesh.halted_stage")
	AttrReason     = attribute.Key("telemesh.reason")
	AttrReasonCode = attribute.Key("telemesh.reason_code")
	// AttrStageStatus is what this stage did, as its stage-log row says
	// (completed, halted, unresolved, failed).
	AttrStageStatus = attribute.Key("telemesh.stage_status")
)

// Messages starts one stage's spans of the messages it handles. A nil
// *Messages (tracing off) starts none and costs nothing.
type Messages struct {
	tracer trace.Tracer
	name   string
	kind   trace.SpanKind
}

// Messages returns the span starter of stage (ingress, validate, ...), nil
// when tracing is off.
func (p *Provider) Messages(stage string) *Messages {
	if !p.Enabled() {
		return nil
	}
	kind := trace.SpanKindInternal
	switch stage {
	case envelope.StageIngress:
		kind = trace.SpanKindConsumer
	case envelope.StagePublish:
		kind = trace.SpanKindProducer
	}
	return &Messages{tracer: p.Tracer(), name: stage, kind: kind}
}

// Spans are the spans of one batch's messages, in the batch's order.
type Spans struct {
	spans []trace.Span
}

// Start starts a span for each envelope, as a child of the trace context
// the envelope carries (a new trace when it carries none) and linked to
// the batch's span in ctx (the gRPC call), and sets the envelope's
// traceparent to it, so the next stage continues the message's trace.
func (m *Messages) Start(ctx context.Context, envs []*telemetryv1.Envelope) *Spans {
	if m == nil {
		return nil
	}
	var opts []trace.SpanStartOption
	if batch := trace.SpanContextFromContext(ctx); batch.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: batch}))
	}
	opts = append(opts, trace.WithSpanKind(m.kind))
	s := &Spans{spans: make([]trace.Span, len(envs))}
	for i, e := range envs {
		attrs := []attribute.KeyValue{
			AttrMessageID.String(e.GetMessageId()),
			AttrDedupeKey.String(e.GetDedupeKey()),
			AttrDevice.String(e.GetDeviceExternalId()),
			AttrTopic.String(e.GetTopic()),
		}
		if subj := e.GetSourceSubject(); subj != "" {
			attrs = append(attrs, AttrSubject.String(subj))
		}
		_, span := m.tracer.Start(Extract(e.GetTraceparent()), m.name, append(opts, trace.WithAttributes(attrs...))...)
		e.Traceparent = Format(span.SpanContext())
		s.spans[i] = span
	}
	return s
}

// Children starts, for each span of parent, a span of m as its child, and
// sets each envelope's traceparent to it: a stage doing two steps (mutate,
// then derive) shows them in order.
func (m *Messages) Children(parent *Spans, envs []*telemetryv1.Envelope) *Spans {
	if m == nil || parent == nil {
		return nil
	}
	s := &Spans{spans: make([]trace.Span, len(envs))}
	for i, e := range envs {
		ctx := trace.ContextWithSpan(context.Background(), parent.spans[i])
		_, span := m.tracer.Start(ctx, m.name, trace.WithSpanKind(m.kind), trace.WithAttributes(
			AttrMessageID.String(e.GetMessageId()), AttrDedupeKey.String(e.GetDedupeKey()),
			AttrDevice.String(e.GetDeviceExternalId()), AttrTopic.String(e.GetTopic()),
		))
		e.Traceparent = Format(span.SpanContext())
		s.spans[i] = span
	}
	return s
}

// Len returns the number of spans, 0 for nil.
func (s *Spans) Len() int {
	if s == nil {
		return 0
	}
	return len(s.spans)
}

// End ends span i with the message's outcome: its status as an attribute
// and, when the message failed, an error status with the reason.
func (s *Spans) End(i int, o *telemetryv1.Outcome) {
	if s == nil || s.spans[i] == nil {
		return
	}
	span := s.spans[i]
	s.spans[i] = nil
	if o == nil {
		span.End()
		return
	}
	attrs := []attribute.KeyValue{AttrOutcome.String(envelope.StatusName(o.GetStatus()))}
	if st := o.GetProcessingState(); st != telemetryv1.ProcessingState_PROCESSING_STATE_UNSPECIFIED {
		attrs = append(attrs, AttrState.String(envelope.StateName(st)))
	}
	if h := o.GetHaltedStage(); h != telemetryv1.Stage_STAGE_UNSPECIFIED {
		attrs = append(attrs, AttrHalted.String(envelope.StageName(h)))
	}
	if r := o.GetReason(); r != "" {
		attrs = append(attrs, AttrReason.String(r))
	}
	span.SetAttributes(attrs...)
	if Failed(o) {
		span.SetStatus(codes.Error, o.GetReason())
	}
	span.End()
}

// EndAll ends every span still open: with the outcomes when the batch got
// them (in the batch's order), else as failed with err.
func (s *Spans) EndAll(outcomes []*telemetryv1.Outcome, err error) {
	if s == nil {
		return
	}
	for i := range s.spans {
		if err != nil {
			s.Fail(i, err.Error())
			continue
		}
		var o *telemetryv1.Outcome
		if i < len(outcomes) {
			o = outcomes[i]
		}
		s.End(i, o)
	}
}

// Fail ends span i as failed with why.
func (s *Spans) Fail(i int, why string) {
	if s == nil || s.spans[i] == nil {
		return
	}
	span := s.spans[i]
	s.spans[i] = nil
	span.SetAttributes(AttrReason.String(why))
	span.SetStatus(codes.Error, why)
	span.End()
}

// SetStage records what the stage did to message i, as its stage-log row
// says: the row's status and, if any, its reason code.
func (s *Spans) SetStage(i int, status, code string) {
	if s == nil || s.spans[i] == nil {
		return
	}
	s.spans[i].SetAttributes(AttrStageStatus.String(status))
	if code != "" {
		s.spans[i].SetAttributes(AttrReasonCode.String(code))
	}
}

// Links returns a link to each span, for the span of the batch they travel
// in.
func (s *Spans) Links() []trace.Link {
	if s == nil {
		return nil
	}
	links := make([]trace.Link, 0, len(s.spans))
	for _, sp := range s.spans {
		if sp != nil {
			links = append(links, trace.Link{SpanContext: sp.SpanContext()})
		}
	}
	return links
}

// Failed reports whether an outcome is a failure: the message did not get
// through (failed validation, failed terminally) or its publish failed.
func Failed(o *telemetryv1.Outcome) bool {
	switch o.GetStatus() {
	case telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_VALIDATION, telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL:
		return true
	}
	return o.GetProcessingState() == telemetryv1.ProcessingState_PROCESSING_STATE_PUBLISH_FAILED
}

// Extract returns a context holding the remote span context a traceparent
// names; a missing or malformed one gives a context without a span. It
// reads the W3C format itself: a stage calls it for every message of every
// batch, and the propagator's carrier costs a map each time.
func Extract(traceparent string) context.Context {
	return ContextWith(context.Background(), traceparent)
}

// ContextWith returns ctx holding the remote span context a traceparent
// names, or ctx itself when it names none, so that what ctx carries (its
// deadline, its values) stays.
func ContextWith(ctx context.Context, traceparent string) context.Context {
	sc, ok := parse(traceparent)
	if !ok {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// Link returns a link to the span a traceparent names; a missing or
// malformed one gives an empty link, which a span ignores.
func Link(traceparent string) trace.Link {
	sc, _ := parse(traceparent)
	return trace.Link{SpanContext: sc}
}

// parse reads a traceparent: version "-" trace-id "-" parent-id "-" flags,
// as W3C Trace Context level 1 writes it (a later version's extra fields
// after the flags are allowed, as the specification asks).
func parse(tp string) (trace.SpanContext, bool) {
	if len(tp) < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' || (len(tp) > 55 && tp[55] != '-') || tp[:2] == "ff" {
		return trace.SpanContext{}, false
	}
	if len(tp) > 55 && tp[:2] == "00" {
		return trace.SpanContext{}, false
	}
	var tid trace.TraceID
	var sid trace.SpanID
	var flags [1]byte
	if _, err := hex.Decode(tid[:], []byte(tp[3:35])); err != nil {
		return trace.SpanContext{}, false
	}
	if _, err := hex.Decode(sid[:], []byte(tp[36:52])); err != nil {
		return trace.SpanContext{}, false
	}
	if _, err := hex.Decode(flags[:], []byte(tp[53:55])); err != nil {
		return trace.SpanContext{}, false
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(flags[0]) & trace.FlagsSampled, Remote: true})
	return sc, sc.IsValid()
}

// Format returns the traceparent of sc, "" when sc is not valid.
func Format(sc trace.SpanContext) string {
	if !sc.IsValid() {
		return ""
	}
	var b [55]byte
	copy(b[:], "00-")
	tid, sid := sc.TraceID(), sc.SpanID()
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{byte(sc.TraceFlags() & trace.FlagsSampled)})
	return string(b[:])
}

// TraceID returns the trace id (32 hex digits) a traceparent names, "" when
// it names none.
func TraceID(traceparent string) string {
	// version "-" trace-id "-" parent-id "-" flags, as W3C Trace Context
	// level 1 writes it.
	if len(traceparent) < 55 || traceparent[2] != '-' || traceparent[35] != '-' {
		return ""
	}
	id := traceparent[3:35]
	var b [16]byte
	if _, err := hex.Decode(b[:], []byte(id)); err != nil || b == [16]byte{} {
		return ""
	}
	return id
}
