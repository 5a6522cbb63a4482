package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/bound"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/reason"
)

// Incoming is one message as it arrived, before it is an envelope.
type Incoming struct {
	Subject string
	Payload []byte
	// HeaderMessageID is the Nats-Msg-Id header, if any.
	HeaderMessageID string
	StreamSequence  uint64
	Delivery        uint32
	ReceivedAt      time.Time
	// DedupeKey, when set, is kept (a parked message being resumed);
	// otherwise it is computed.
	DedupeKey string
	// MessageID, when set, is kept; otherwise a new time-ordered id is made.
	MessageID uuid.UUID
}

// payloadIDs are the payload fields that may carry the device's message id
// and recorded time.
type payloadIDs struct {
	MessageID json.RawMessage `json:"message_id"`
	MsgID     json.RawMessage `json:"msg_id"`
	ID        json.RawMessage `json:"id"`
}

// PayloadMessageID returns the device's message id from a JSON payload's
// top-level message_id, msg_id or id (a string or an integer), and whether
// the payload is a JSON object at all.
func PayloadMessageID(payload []byte) (id string, object bool) {
	id, err := payloadMessageID(payload)
	return id, err == nil
}

// payloadMessageID is [PayloadMessageID] with the reason a payload is not a
// JSON object.
func payloadMessageID(payload []byte) (string, error) {
	trimmed := bytes.TrimLeft(payload, " \t\r\n")
	switch {
	case len(trimmed) == 0:
		return "", errors.New("it is empty")
	case trimmed[0] != '{' && json.Valid(trimmed):
		return "", notObjectError{kind: jsonKind(trimmed[0])}
	}
	var ids payloadIDs
	if err := json.Unmarshal(payload, &ids); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			return "", fmt.Errorf("%w at offset %d", err, syntax.Offset)
		}
		return "", err
	}
	for _, raw := range []json.RawMessage{ids.MessageID, ids.MsgID, ids.ID} {
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil && s != "" {
			return s, nil
		}
		var n json.Number
		if json.Unmarshal(raw, &n) == nil {
			if _, err := strconv.ParseInt(n.String(), 10, 64); err == nil {
				return n.String(), nil
			}
		}
	}
	return "", nil
}

// jsonKind names the kind of a JSON value by its first byte.
func jsonKind(first byte) string {
	switch first {
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// MaxMessageIDBytes bounds a device's message id, as the Ingest call does:
// a longer one cannot be part of an indexed dedupe key, so its message is
// recorded failed_terminal with the id cut and hashed.
const MaxMessageIDBytes = 256

// MaxSubjectBytes bounds a subject, as the Ingest call does. No device's
// subject is that long (an external id is at most 200 characters); a longer
// one is recorded failed_terminal with the subject cut and hashed.
const MaxSubjectBytes = 512

// textProblem says why s, a subject or a message id, cannot be kept as
// text: longer than limit bytes, or not what Postgres text and protobuf
// strings hold (valid UTF-8 without NUL), while NATS passes any byte but
// space in a subject or a header. It returns "" when s is fine.
func textProblem(what, s string, limit int) string {
	switch {
	case len(s) > limit:
		return fmt.Sprintf("%s of %d bytes exceeds the limit of %d bytes", what, len(s), limit)
	case !utf8.ValidString(s):
		return fmt.Sprintf("%s %q is not valid UTF-8", what, s)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Sprintf("%s %q holds a NUL byte", what, s)
	}
	return ""
}

// BuildEnvelope makes the envelope for one incoming message: it resolves
// the subject against the catalog, computes the dedupe key, and marks the
// message failed_terminal (unknown topic, not a JSON object, an id or a
// subject too long or not text) or parked (its organization's switch is
// off) when it can go no further. Such messages still travel to the
// persister so the evidence is kept. Every field it takes from the message
// is bounded, so the envelope can always be stored.
func BuildEnvelope(in Incoming, snap *catalog.Snapshot, switches *catalog.Switches, streamEpoch string) *telemetryv1.Envelope {
	id := in.MessageID
	if id == uuid.Nil {
		id = uuid.Must(uuid.NewV7())
	}
	srcID := in.HeaderMessageID
	payloadID, payloadErr := payloadMessageID(in.Payload)
	if srcID == "" {
		srcID = payloadID
	}
	subjectProblem := textProblem("subject", in.Subject, MaxSubjectBytes)
	idProblem := textProblem("message id", srcID, MaxMessageIDBytes)
	key := in.DedupeKey
	switch {
	case key != "":
	case bound.Clean(in.Subject) != in.Subject || bound.Clean(srcID) != srcID:
		// Text that is not text cannot be part of a key; the stream
		// sequence still makes a redelivery a duplicate.
		key = DedupeKey("", "", streamEpoch, in.StreamSequence)
	default:
		// A subject or an id over its limit is cut and ends with its hash:
		// the key stays within what an index holds, and a device sending
		// the same long id again is still a duplicate.
		key = DedupeKey(bound.Text(in.Subject, MaxSubjectBytes), bound.Text(srcID, MaxMessageIDBytes), streamEpoch, in.StreamSequence)
	}
	e := &telemetryv1.Envelope{
		MessageId:       id.String(),
		SourceMessageId: bound.Text(srcID, MaxMessageIDBytes),
		DedupeKey:       bound.Key(key, bound.MaxKeyBytes),
		SourceSubject:   bound.Text(in.Subject, MaxSubjectBytes),
		StreamSequence:  in.StreamSequence,
		DeliveryAttempt: max(in.Delivery, 1),
		ReceivedAt:      timestamppb.New(in.ReceivedAt),
		Payload:         in.Payload,
		ContentType:     "application/json",
		Status:          telemetryv1.MessageStatus_MESSAGE_STATUS_PROCESSING,
	}
	halt := func(code, reason string) *telemetryv1.Envelope {
		e.Status = telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL
		e.HaltedStage = telemetryv1.Stage_STAGE_INGRESS
		e.Reason = bound.Text(reason, bound.MaxReasonBytes)
		e.ReasonCode = code
		return e
	}
	if subjectProblem != "" {
		return halt(reason.InvalidSubject, subjectProblem)
	}
	if snap == nil {
		return halt(reason.CatalogUnavailable, "catalog not loaded")
	}
	res, err := snap.Resolve(in.Subject)
	if err != nil {
		return halt(resolveCode(err), err.Error())
	}
	e.DeviceUuid = res.Device.ID.String()
	e.DeviceExternalId = res.Device.ExternalID
	e.DeviceTypeId = res.DeviceType.ID.String()
	e.DeviceActive = res.Device.Active
	e.Topic = res.Topic.Suffix
	e.TopicId = res.Topic.ID.String()
	if res.Organization != nil {
		e.OrganizationId = res.Organization.ID.String()
		e.OrganizationSlug = res.Organization.Slug
	}
	if idProblem != "" {
		return halt(reason.InvalidMessageID, idProblem)
	}
	if payloadErr != nil {
		return halt(payloadCode(payloadErr), "payload is not a JSON object: "+payloadErr.Error())
	}
	if res.Organization != nil && !switches.OrgEnabled(res.Organization.ID) {
		e.Status = telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED
		e.HaltedStage = telemetryv1.Stage_STAGE_INGRESS
		e.Reason = fmt.Sprintf("organization %s has pipeline.enabled off; parked until it is on", res.Organization.Slug)
		e.ReasonCode = reason.Parked
	}
	return e
}

// notObjectError is a payload that is valid JSON but not an object.
type notObjectError struct{ kind string }

func (e notObjectError) Error() string { return "it is a JSON " + e.kind }

// payloadCode is the reason code of a payload [payloadMessageID] refused:
// JSON that is not an object, or not JSON at all.
func payloadCode(err error) string {
	if errors.As(err, new(notObjectError)) {
		return reason.NotAnObject
	}
	return reason.InvalidJSON
}

// resolveCode is the reason code of a subject the catalog cannot resolve.
func resolveCode(err error) string {
	var re *catalog.ResolveError
	if errors.As(err, &re) && re.Code != "" {
		return re.Code
	}
	return reason.InvalidSubject
}
