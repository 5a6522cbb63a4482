package persister

import (
	"encoding/json"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/pipeline"
)

// Message is one message as the persister stores it.
type Message struct {
	// ID is telemesh's id; the telemetry row has the same id.
	ID              uuid.UUID
	DedupeKey       string
	SourceMessageID string
	SourceSubject   string
	// OrganizationID and DeviceID are uuid.Nil when the subject named none.
	OrganizationID  uuid.UUID
	DeviceID        uuid.UUID
	StreamSequence  uint64
	DeliveryAttempt int
	RawPayload      []byte
	ContentType     string
	// Status is the message status to store.
	Status      pipeline.Status
	HaltedStage string
	Reason      string
	ReceivedAt  time.Time
	// TraceID is the message's trace id, "" when it has none.
	TraceID string
	// Telemetry is the row for device_telemetry_logs; nil for messages
	// that have none (failed_terminal, parked).
	Telemetry *Telemetry
}

// Telemetry is a device_telemetry_logs row.
type Telemetry struct {
	Topic            string
	RecordedAt       time.Time
	State            pipeline.State
	Valid            bool
	ValidationErrors any
	// Mutated, Transformed and Unresolved are JSON objects: the values
	// after their mutations, those plus the derived values, and the values
	// that could not be computed with their reasons. Empty is {}.
	Mutated       string
	Transformed   string
	Unresolved    string
	FailureReason string
	// PayloadRefused says the validator refused the payload as a whole (its
	// size, keys, depth or encoding): it was never decoded, and the row
	// keeps no JSON copy of it.
	PayloadRefused bool
}

// Disposition says what persisting did with a message.
type Disposition int

const (
	// Inserted is a message stored for the first time.
	Inserted Disposition = iota + 1
	// Resumed is a parked message stored with its final status.
	Resumed
	// Duplicate is a message whose dedupe key was already stored by an
	// original that reached persist; nothing was written for it.
	Duplicate
	// Refused is a message Postgres refused to store even alone: it is
	// recorded failed_terminal at persist with the reason, without a
	// telemetry row.
	Refused
)

// Result is the disposition of one message, in input order.
type Result struct {
	Disposition Disposition
	// OriginalID is the stored message's id, which differs from the
	// message's own for a duplicate.
	OriginalID uuid.UUID
	// OriginalStatus is the stored status of a duplicate's original.
	OriginalStatus pipeline.Status
	// Reason says why a message was refused.
	Reason string
	// PayloadNote says what the stored-payload limit left of the
	// message's payload; "" when it is kept whole.
	PayloadNote string
}

// FirstOfKey returns, for each message, the index of the first message in
// the batch with the same dedupe key (itself when it is the first). A
// redelivery can land in the same batch as its original, and one statement
// cannot write a key twice.
func FirstOfKey(msgs []Message) []int {
	first := make(map[string]int, len(msgs))
	out := make([]int, len(msgs))
	for i := range msgs {
		if j, ok := first[msgs[i].DedupeKey]; ok {
			out[i] = j
			continue
		}
		first[msgs[i].DedupeKey] = i
		out[i] = i
	}
	return out
}

// jsonText encodes v for a jsonb column; nil maps become {}.
func jsonText(v any, empty string) (string, error) {
	switch t := v.(type) {
	case nil:
		return empty, nil
	case map[string]any:
		if len(t) == 0 {
			return empty, nil
		}
	case json.RawMessage:
		return string(t), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return string(b), nil
}
