// Package reason defines the stable codes that say why a stage did not
// complete a message.
//
// The stage that decides an outcome sets its code on the stage-log row it
// writes (ingestion_stage_logs.reason_code), beside the full text of the
// reason. status, doctor and the viewer group failures by the code, so one
// cause is one line however its texts differ (a byte offset, a subject, a
// device). Operators filter and alert on the codes: a code is never renamed
// and never reused for another cause.
package reason

// Codes of the ingress stage (the gateway).
const (
	// InvalidSubject is a subject that is not <base>.<device>.<topic>, or
	// not text that can be stored (invalid UTF-8, a NUL byte, too long).
	InvalidSubject = "invalid_subject"
	// UnknownDevice is a subject naming no live device.
	UnknownDevice = "unknown_device"
	// UnknownTopic is a subject whose base or suffix is not a topic of its
	// device's type, or a topic removed since the message arrived.
	UnknownTopic = "unknown_topic"
	// InvalidMessageID is a device's message id that cannot be kept as text.
	InvalidMessageID = "invalid_message_id"
	// CatalogUnavailable is a message taken before the catalog of devices
	// and topics was loaded.
	CatalogUnavailable = "catalog_unavailable"
	// Parked is a message held because its organization's pipeline switch
	// is off; it is resumed when the switch is turned back on.
	Parked = "parked"
	// DeadLettered is a message that failed transiently on every delivery
	// up to MaxDeliver and was recorded failed_terminal.
	DeadLettered = "dead_lettered"
	// Rejected is a message the chain refused with a non-transient error,
	// recorded failed_terminal.
	Rejected = "rejected"
	// Transient is a delivery the chain did not finish for a reason that
	// may pass (a stage or Postgres unreachable, a deadline exceeded); the
	// message is redelivered with backoff.
	Transient = "transient"
)

// Codes of a payload that cannot be read, at ingress or validate.
const (
	// InvalidJSON is a payload that is not one JSON document (empty, cut
	// short, or with the NaN and Infinity literals JSON does not have).
	InvalidJSON = "invalid_json"
	// NotAnObject is a JSON document whose top level is not an object.
	NotAnObject = "not_an_object"
	// PayloadTooLarge is a payload over the size limit.
	PayloadTooLarge = "payload_too_large"
	// TooManyKeys is a payload with more object keys than the limit.
	TooManyKeys = "too_many_keys"
	// TooDeep is a payload nested deeper than the limit.
	TooDeep = "too_deep"
	// InvalidUTF8 is a payload that is not valid UTF-8.
	InvalidUTF8 = "invalid_utf8"
)

// Codes of the validate stage: the device, duplicates, and the parameter
// rules. A message that breaks several rules carries the code of the first
// critical issue, else of the first issue; every issue stays in the row's
// errors with its own code.
const (
	// Inactive is a message from a device that is switched inactive.
	Inactive = "inactive"
	// Duplicate is a message whose dedupe key already reached persist.
	Duplicate = "duplicate"
	// InvalidNumber is a number beyond the range of a 64-bit float.
	InvalidNumber = "invalid_number"
	// Required is a required parameter that is absent or null.
	Required = "required"
	// Type is a value of the wrong JSON type for its parameter.
	Type = "type"
	// Min is a number below its parameter's minimum.
	Min = "min"
	// Max is a number above its parameter's maximum.
	Max = "max"
	// Regex is a string that does not match its parameter's pattern.
	Regex = "regex"
	// Enum is a value that is none of its parameter's enum entries.
	Enum = "enum"
	// RuleInvalid is a parameter definition that cannot be applied.
	RuleInvalid = "rule_invalid"
)

// Codes of the mutate and derive stages. A derive row with several
// unresolved values carries the first of cycle, evaluation_error and
// missing_input among them: a broken definition before missing data.
const (
	// EvaluationError is a mutation or derived expression that failed or
	// gave no usable value.
	EvaluationError = "evaluation_error"
	// MissingInput is a derived value whose inputs are absent or
	// unresolved.
	MissingInput = "missing_input"
	// Cycle is a derived value that depends on itself.
	Cycle = "cycle"
)

// Codes of the persist stage.
const (
	// Unstorable is a message whose content Postgres refused even alone
	// (a value no column can hold); it is recorded failed_terminal.
	Unstorable = "unstorable"
)

// Codes of the publish stage.
const (
	// KVUnavailable is a device state the KV bucket did not take (the
	// bucket missing, NATS unreachable, no acknowledgement).
	KVUnavailable = "kv_unavailable"
	// KVConflict is a device state that kept changing under every
	// compare-and-set attempt.
	KVConflict = "kv_conflict"
	// PublishFailed is an analytics or invalid event the stream did not
	// acknowledge.
	PublishFailed = "publish_failed"
	// PublisherUnreachable is a row the persister stored but could not hand
	// to the publisher; the publisher's retry loop takes it.
	PublisherUnreachable = "publisher_unreachable"
)

// Unclassified is the code a reader gives a failure row written without
// one, before codes were recorded, so the row is still counted.
const Unclassified = "unclassified"
