package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/catalog"
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
	if trimmed := bytes.TrimLeft(payload, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
		return "", false
	}
	var ids payloadIDs
	if err := json.Unmarshal(payload, &ids); err != nil {
		return "", false
	}
	for _, raw := range []json.RawMessage{ids.MessageID, ids.MsgID, ids.ID} {
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil && s != "" {
			return s, true
		}
		var n json.Number
		if json.Unmarshal(raw, &n) == nil {
			if _, err := strconv.ParseInt(n.String(), 10, 64); err == nil {
				return n.String(), true
			}
		}
	}
	return "", true
}

// BuildEnvelope makes the envelope for one incoming message: it resolves
// the subject against the catalog, computes the dedupe key, and marks the
// message failed_terminal (unknown topic, not a JSON object) or parked (its
// organization's switch is off) when it can go no further. Such messages
// still travel to the persister so the evidence is kept.
func BuildEnvelope(in Incoming, snap *catalog.Snapshot, switches *catalog.Switches, streamEpoch string) *telemetryv1.Envelope {
	id := in.MessageID
	if id == uuid.Nil {
		id = uuid.Must(uuid.NewV7())
	}
	srcID := in.HeaderMessageID
	payloadID, isObject := PayloadMessageID(in.Payload)
	if srcID == "" {
		srcID = payloadID
	}
	key := in.DedupeKey
	if key == "" {
		key = DedupeKey(in.Subject, srcID, streamEpoch, in.StreamSequence)
	}
	e := &telemetryv1.Envelope{
		MessageId:       id.String(),
		SourceMessageId: srcID,
		DedupeKey:       key,
		SourceSubject:   in.Subject,
		StreamSequence:  in.StreamSequence,
		DeliveryAttempt: max(in.Delivery, 1),
		ReceivedAt:      timestamppb.New(in.ReceivedAt),
		Payload:         in.Payload,
		ContentType:     "application/json",
		Status:          telemetryv1.MessageStatus_MESSAGE_STATUS_PROCESSING,
	}
	halt := func(reason string) *telemetryv1.Envelope {
		e.Status = telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL
		e.HaltedStage = telemetryv1.Stage_STAGE_INGRESS
		e.Reason = reason
		return e
	}
	if snap == nil {
		return halt("catalog not loaded")
	}
	res, err := snap.Resolve(in.Subject)
	if err != nil {
		return halt(err.Error())
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
	if !isObject {
		return halt("payload is not a JSON object")
	}
	if res.Organization != nil && !switches.OrgEnabled(res.Organization.ID) {
		e.Status = telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED
		e.HaltedStage = telemetryv1.Stage_STAGE_INGRESS
		e.Reason = fmt.Sprintf("organization %s has pipeline.enabled off; parked until it is on", res.Organization.Slug)
	}
	return e
}
