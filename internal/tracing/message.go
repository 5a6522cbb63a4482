package tracing

import (
	"context"
	"encoding/hex"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/stagelog"
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
//
// The head sampler decides each message's span when the stage takes the
// message. A sampled span is started then and recorded as usual. An
// unsampled one costs only its ids: the message carries them on in its
// traceparent (so its trace id is stored and the next stages continue the
// same trace), nothing is recorded, and when the message fails the span is
// written after the fact, with the ids the message carried, the time the
// stage took it as its start and the outcome's time as its end, so the
// trace of a failed message reads as if it had been sampled.
type Messages struct {
	tracer  trace.Tracer
	sampled func(parent trace.SpanContext, id trace.TraceID) bool
	name    string
	kind    trace.SpanKind
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
	return &Messages{tracer: p.decided.Tracer(instrumentation), sampled: p.sampled, name: stage, kind: kind}
}

// Spans are the spans of one batch's messages, in the batch's order.
type Spans struct {
	m    *Messages
	name string
	envs []*telemetryv1.Envelope
	// start is when the stage took the batch: the start of every span.
	start time.Time
	// batch is the span of the call that carried the batch, if any: each
	// message span links to it.
	batch trace.SpanContext
	// remote says the parents came from another process (the envelope's
	// traceparent), not from spans of this stage.
	remote bool
	// msgs holds no pointer, so the garbage collector need not look into
	// it: the few recording spans are in live, what SetStage said of an
	// unsampled message other than "completed" in notes.
	msgs  []message
	live  []trace.Span
	notes []note
}

// message is one message's span: its ids always, the span itself only
// while it is recorded.
type message struct {
	trace  trace.TraceID
	id     trace.SpanID
	parent trace.SpanID // zero: the trace starts here
	// live is 1 + the index of the message's recording span in
	// Spans.live; 0 for an unsampled message, or once the span ended.
	live int32
	// note is what [Spans.SetStage] said of an unsampled message, for its
	// span if it is written after the fact: 0 nothing, completedNote, or
	// 1 + an index in Spans.notes.
	note  int32
	ended bool
}

// completedNote is [message.note] of a stage that completed without a
// reason code, which is what nearly every message's stage does.
const completedNote = -1

// note is what SetStage said.
type note struct{ status, code string }

func (m *Messages) spans(envs []*telemetryv1.Envelope, remote bool) *Spans {
	return &Spans{m: m, name: m.name, envs: envs, start: time.Now(), remote: remote, msgs: make([]message, len(envs))}
}

// record starts message i's span and keeps it as the recording span.
func (s *Spans) record(i int) {
	s.live = append(s.live, s.begin(i))
	s.msgs[i].live = int32(len(s.live))
}

// Start opens a span for each envelope, as a child of the trace context the
// envelope carries (a new trace when it carries none) and linked to the
// batch's span in ctx (the gRPC call), and sets the envelope's traceparent
// to it, so the next stage continues the message's trace.
func (m *Messages) Start(ctx context.Context, envs []*telemetryv1.Envelope) *Spans {
	if m == nil {
		return nil
	}
	s := m.spans(envs, true)
	s.batch = trace.SpanContextFromContext(ctx)
	for i, e := range envs {
		parent, _ := parse(e.GetTraceparent())
		s.open(i, parent)
	}
	return s
}

// Children opens, for each span of parent, a span of m as its child, and
// sets each envelope's traceparent to it: a stage doing two steps (mutate,
// then derive) shows them in order.
func (m *Messages) Children(parent *Spans, envs []*telemetryv1.Envelope) *Spans {
	if m == nil || parent == nil {
		return nil
	}
	s := m.spans(envs, false)
	for i := range envs {
		p := &parent.msgs[i]
		var flags trace.TraceFlags
		if p.live != 0 {
			flags = trace.FlagsSampled
		}
		s.open(i, trace.NewSpanContext(trace.SpanContextConfig{TraceID: p.trace, SpanID: p.id, TraceFlags: flags}))
	}
	return s
}

// Retry opens, for messages taken up again outside the chain (the
// publisher's retry loop), a span named "<stage> retry" in each message's
// trace, and sets each envelope's traceparent to it. traceIDs are the
// trace ids the messages' rows keep (ingestion_messages.trace_id); a
// message without one gets no span. A retry is always sampled: its message
// failed (or its stage stopped) on the way, so its trace was kept. The
// span has no parent, since nothing says which span of the trace it
// follows.
func (m *Messages) Retry(traceIDs []string, envs []*telemetryv1.Envelope) *Spans {
	if m == nil {
		return nil
	}
	s := m.spans(envs, false)
	s.name = m.name + " retry"
	for i := range envs {
		msg := &s.msgs[i]
		tid, err := trace.TraceIDFromHex(traceIDs[i])
		if err != nil {
			msg.ended = true
			continue
		}
		msg.trace = tid
		msg.id = newSpanID()
		s.record(i)
		envs[i].Traceparent = format(msg.trace, msg.id, trace.FlagsSampled)
	}
	return s
}

// open decides message i's span, a child of parent (not valid: the
// message's trace starts here), and puts it in the message's traceparent.
func (s *Spans) open(i int, parent trace.SpanContext) {
	msg := &s.msgs[i]
	msg.trace, msg.parent = parent.TraceID(), parent.SpanID()
	if !parent.IsValid() {
		msg.trace, msg.parent = newTraceID(), trace.SpanID{}
	}
	msg.id = newSpanID()
	var flags trace.TraceFlags
	if s.m.sampled(parent, msg.trace) {
		s.record(i)
		flags = trace.FlagsSampled
	}
	s.envs[i].Traceparent = format(msg.trace, msg.id, flags)
}

// begin starts message i's span with the ids it was given, from the time
// the stage took the batch.
func (s *Spans) begin(i int) trace.Span {
	msg, e := &s.msgs[i], s.envs[i]
	ctx := context.Background()
	if msg.parent.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: msg.trace, SpanID: msg.parent, TraceFlags: trace.FlagsSampled, Remote: s.remote}))
	}
	attrs := make([]attribute.KeyValue, 0, 5)
	attrs = append(attrs,
		AttrMessageID.String(e.GetMessageId()),
		AttrDedupeKey.String(e.GetDedupeKey()),
		AttrDevice.String(e.GetDeviceExternalId()),
		AttrTopic.String(e.GetTopic()),
	)
	if subj := e.GetSourceSubject(); subj != "" {
		attrs = append(attrs, AttrSubject.String(subj))
	}
	opts := []trace.SpanStartOption{trace.WithSpanKind(s.m.kind), trace.WithTimestamp(s.start), trace.WithAttributes(attrs...)}
	if s.batch.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: s.batch}))
	}
	_, span := s.m.tracer.Start(withIDs(ctx, msg.trace, msg.id), s.name, opts...)
	return span
}

// End ends span i with the message's outcome: its status as an attribute
// and, when the message failed, an error status with the reason. The span
// of an unsampled message is written now if the message failed, else it
// is let go.
func (s *Spans) End(i int, o *telemetryv1.Outcome) {
	span := s.closing(i, o != nil && Failed(o))
	if span == nil {
		return
	}
	if o == nil {
		span.End()
		return
	}
	var attrs []attribute.KeyValue
	if st := o.GetStatus(); st != telemetryv1.MessageStatus_MESSAGE_STATUS_UNSPECIFIED {
		attrs = append(attrs, AttrOutcome.String(envelope.StatusName(st)))
	}
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

// closing marks span i ended and returns the span to end: the recorded
// one, or, for an unsampled message that failed, the one written after the
// fact; nil when there is none to end.
func (s *Spans) closing(i int, failed bool) trace.Span {
	if s == nil || s.msgs[i].ended {
		return nil
	}
	msg := &s.msgs[i]
	msg.ended = true
	if msg.live != 0 {
		span := s.live[msg.live-1]
		s.live[msg.live-1], msg.live = nil, 0
		return span
	}
	if !failed {
		return nil
	}
	span := s.begin(i)
	switch {
	case msg.note == completedNote:
		setStage(span, stagelog.StatusCompleted, "")
	case msg.note > 0:
		n := s.notes[msg.note-1]
		setStage(span, n.status, n.code)
	}
	return span
}

// EndAll ends every span still open: with the outcomes when the batch got
// them (in the batch's order), else as failed with err.
func (s *Spans) EndAll(outcomes []*telemetryv1.Outcome, err error) {
	if s == nil {
		return
	}
	for i := range s.msgs {
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
	span := s.closing(i, true)
	if span == nil {
		return
	}
	span.SetAttributes(AttrReason.String(why))
	span.SetStatus(codes.Error, why)
	span.End()
}

// SetStage records what the stage did to message i, as its stage-log row
// says: the row's status and, if any, its reason code.
func (s *Spans) SetStage(i int, status, code string) {
	if s == nil || s.msgs[i].ended {
		return
	}
	msg := &s.msgs[i]
	switch {
	case msg.live != 0:
		setStage(s.live[msg.live-1], status, code)
	case status == stagelog.StatusCompleted && code == "":
		msg.note = completedNote
	default:
		s.notes = append(s.notes, note{status, code})
		msg.note = int32(len(s.notes))
	}
}

func setStage(span trace.Span, status, code string) {
	span.SetAttributes(AttrStageStatus.String(status))
	if code != "" {
		span.SetAttributes(AttrReasonCode.String(code))
	}
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
	return format(sc.TraceID(), sc.SpanID(), sc.TraceFlags())
}

// format writes a traceparent: version 00, the ids, the sampled flag.
func format(tid trace.TraceID, sid trace.SpanID, flags trace.TraceFlags) string {
	var b [55]byte
	copy(b[:], "00-")
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{byte(flags & trace.FlagsSampled)})
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
