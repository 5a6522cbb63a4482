// Package envelope holds the helpers every stage uses to read and fill the
// telemetry envelope: the vocabulary of stages, statuses and states as they
// are stored, and conversions between protobuf and plain Go values.
package envelope

import (
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/pipeline"
)

// WireVersion is the version of the envelope's layout this build speaks.
// Every batch request carries it, and a stage refuses a batch of another
// version as Unavailable, so the caller retries once both ends run the same
// release. Raise it whenever a change to the envelope would make a stage of
// the previous release misread a batch.
const WireVersion = 2

// Stage names as stored in ingestion_stage_logs.stage: the names of
// [pipeline.Stage], as the string a stage-log entry holds.
const (
	StageIngress  = string(pipeline.Ingress)
	StageValidate = string(pipeline.Validate)
	StageMutate   = string(pipeline.Mutate)
	StageDerive   = string(pipeline.Derive)
	StagePersist  = string(pipeline.Persist)
	StagePublish  = string(pipeline.Publish)
)

// StageName returns the stored name of a stage, or "" for none.
func StageName(s telemetryv1.Stage) string {
	if s == telemetryv1.Stage_STAGE_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "STAGE_"))
}

// StatusName returns the stored name of a message status, or "" for none.
func StatusName(s telemetryv1.MessageStatus) string {
	if s == telemetryv1.MessageStatus_MESSAGE_STATUS_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "MESSAGE_STATUS_"))
}

// StateName returns the stored name of a processing state, or "" for none.
func StateName(s telemetryv1.ProcessingState) string {
	if s == telemetryv1.ProcessingState_PROCESSING_STATE_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "PROCESSING_STATE_"))
}

// StatusFromString maps a stored message status to its enum.
func StatusFromString(s string) telemetryv1.MessageStatus {
	return telemetryv1.MessageStatus(telemetryv1.MessageStatus_value["MESSAGE_STATUS_"+strings.ToUpper(s)])
}

// StateFromString maps a stored processing state to its enum.
func StateFromString(s string) telemetryv1.ProcessingState {
	return telemetryv1.ProcessingState(telemetryv1.ProcessingState_value["PROCESSING_STATE_"+strings.ToUpper(s)])
}

// Terminal reports whether a message status ends the message's handling, so
// the gateway may acknowledge it.
func Terminal(s telemetryv1.MessageStatus) bool {
	switch s {
	case telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED,
		telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_VALIDATION,
		telemetryv1.MessageStatus_MESSAGE_STATUS_INACTIVE_SKIPPED,
		telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL,
		telemetryv1.MessageStatus_MESSAGE_STATUS_DUPLICATE,
		telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED:
		return true
	}
	return false
}

// Halted reports whether a message stopped before the deriver: it goes
// straight to the persister as evidence.
func Halted(e *telemetryv1.Envelope) bool {
	switch e.GetStatus() {
	case telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_VALIDATION,
		telemetryv1.MessageStatus_MESSAGE_STATUS_INACTIVE_SKIPPED,
		telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL,
		telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED:
		return true
	}
	return false
}

// ParseUUID parses s, or returns uuid.Nil when it is empty or malformed.
func ParseUUID(s string) uuid.UUID {
	u, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil
	}
	return u
}

// Time converts a timestamp; a missing one is the zero time.
func Time(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

// Unresolved is a derived value that could not be computed, as stored in
// device_telemetry_logs.unresolved_values and the stage logs.
type Unresolved struct {
	Reason        string   `json:"reason"`
	MissingInputs []string `json:"missing_inputs,omitempty"`
	Cycle         []string `json:"cycle,omitempty"`
	Detail        string   `json:"detail,omitempty"`
}

// ValidationError is one validation error as stored in
// device_telemetry_logs.validation_errors.
type ValidationError struct {
	Parameter string `json:"parameter,omitempty"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	Critical  bool   `json:"critical"`
}

// ValidationErrors converts the envelope's validation errors for storage.
func ValidationErrors(errs []*telemetryv1.ValidationError) []ValidationError {
	out := make([]ValidationError, len(errs))
	for i, e := range errs {
		out[i] = ValidationError{Parameter: e.GetParameter(), Code: e.GetCode(), Message: e.GetMessage(), Critical: e.GetCritical()}
	}
	return out
}

// MaxBatch is the most envelopes one batch request may hold.
const MaxBatch = 10000

// WireVersionError is a batch sent by a stage of another release: the two
// would misread each other's envelopes. It is temporary: the caller
// retries, and succeeds once both ends run the same release.
type WireVersionError struct {
	// Got is the version the batch was sent with; 0 is a release from
	// before versions were sent.
	Got uint32
}

func (e WireVersionError) Error() string {
	return fmt.Sprintf("the batch is of wire version %d and this stage speaks %d: stages of two releases are running; "+
		"the batch is retried once every stage runs the same release", e.Got, WireVersion)
}

// Temporary marks the error as one that passes: the batch is retried.
func (WireVersionError) Temporary() bool { return true }

// BatchError is a batch that breaks what every stage relies on.
type BatchError struct {
	// Index is the envelope at fault, or -1 for the batch as a whole.
	Index  int
	Reason string
}

func (e BatchError) Error() string {
	if e.Index < 0 {
		return "invalid batch: " + e.Reason
	}
	return fmt.Sprintf("invalid batch: envelope %d: %s", e.Index, e.Reason)
}

// InvalidInput marks the error as the caller's.
func (BatchError) InvalidInput() bool { return true }

// CheckBatch checks a batch one stage sends another: its wire version, its
// size, and in each envelope what every stage relies on, a message id
// that is a UUID and a dedupe key. It is what the stages check instead of
// every field of every envelope at every hop; the gateway's Ingest, which
// is reached from outside, has its request checked in full.
func CheckBatch(version uint32, envs []*telemetryv1.Envelope) error {
	if version != WireVersion {
		return WireVersionError{Got: version}
	}
	if len(envs) == 0 || len(envs) > MaxBatch {
		return BatchError{Index: -1, Reason: fmt.Sprintf("%d envelopes, want 1 to %d", len(envs), MaxBatch)}
	}
	for i, e := range envs {
		if e == nil {
			return BatchError{Index: i, Reason: "missing"}
		}
		if ParseUUID(e.GetMessageId()) == uuid.Nil {
			return BatchError{Index: i, Reason: "message_id is not a UUID"}
		}
		if e.GetDedupeKey() == "" {
			return BatchError{Index: i, Reason: "dedupe_key is empty"}
		}
	}
	return nil
}
