// Package pipeline is the vocabulary every part of telemesh shares: the
// stage services and the stages of the stage logs in chain order, what a
// stage did to a message, message statuses, telemetry row states and the
// pipeline switches, with the names stored in Postgres and shown to
// operators. It imports nothing of telemesh, so any package may use it; a
// test holds its names to the enums of telemesh.telemetry.v1.
package pipeline

import "slices"

// Service is a stage service: a process of its own in production
// (`telemesh serve <service>`), named as its gRPC target is keyed.
type Service string

// The stage services.
const (
	Gateway   Service = "gateway"
	Validator Service = "validator"
	Deriver   Service = "deriver"
	Persister Service = "persister"
	Publisher Service = "publisher"
)

// services is the chain: the order a message travels the services in.
var services = []Service{Gateway, Validator, Deriver, Persister, Publisher}

// ServiceNames returns the stage services' names in chain order.
func ServiceNames() []string {
	out := make([]string, len(services))
	for i, s := range services {
		out[i] = string(s)
	}
	return out
}

// Stage is a step of the pipeline as ingestion_stage_logs.stage stores it.
// The deriver runs two of them, mutate and derive.
type Stage string

// The stages, named as the system telemesh replaces named them.
const (
	Ingress  Stage = "ingress"
	Validate Stage = "validate"
	Mutate   Stage = "mutate"
	Derive   Stage = "derive"
	Persist  Stage = "persist"
	Publish  Stage = "publish"
)

// stages is the chain of the stage logs.
var stages = []Stage{Ingress, Validate, Mutate, Derive, Persist, Publish}

// Stages returns the stages in the order a message meets them. The slice
// is the caller's.
func Stages() []Stage { return slices.Clone(stages) }

// Order is the stage's place in [Stages], or len(Stages()) for a name that
// is not a stage, so unknown names sort last.
func (s Stage) Order() int {
	if i := slices.Index(stages, s); i >= 0 {
		return i
	}
	return len(stages)
}

// Service is the stage service that runs the stage, or "" for a name that
// is not a stage.
func (s Stage) Service() Service {
	switch s {
	case Ingress:
		return Gateway
	case Validate:
		return Validator
	case Mutate, Derive:
		return Deriver
	case Persist:
		return Persister
	case Publish:
		return Publisher
	}
	return ""
}

// StageStatus is what one stage did to one message, as
// ingestion_stage_logs.status stores it. Only completed counts as success
// for the failures mode of the stage logs.
type StageStatus string

// The stage statuses.
const (
	// StageCompleted is a stage that did its work and passed the message on.
	StageCompleted StageStatus = "completed"
	// StageHalted is a stage that stopped the message on purpose (invalid
	// payload, inactive device, unknown topic).
	StageHalted StageStatus = "halted"
	// StageFailed is a stage whose work failed for this attempt (a terminal
	// error, a dead letter, a publish left to the retry loop).
	StageFailed StageStatus = "failed"
	// StageRetrying is a transient failure; the message is redelivered.
	StageRetrying StageStatus = "retrying"
	// StageSkipped is a stage with nothing to do for the message.
	StageSkipped StageStatus = "skipped"
	// StageDuplicate is a message whose original already reached persist.
	StageDuplicate StageStatus = "duplicate"
	// StageUnresolved is a stage that left values unresolved.
	StageUnresolved StageStatus = "unresolved"
	// StageParked is a message held by its organization's switch.
	StageParked StageStatus = "parked"
	// StageDryRun is a stage that ran for a preview and wrote nothing.
	StageDryRun StageStatus = "dry_run"
)

// stageStatuses are the stage statuses in the order of their enum.
var stageStatuses = []StageStatus{StageCompleted, StageHalted, StageFailed, StageRetrying, StageSkipped,
	StageDuplicate, StageUnresolved, StageParked, StageDryRun}

// StageStatuses returns every stage status. The slice is the caller's.
func StageStatuses() []StageStatus { return slices.Clone(stageStatuses) }

// Status is the lifecycle status of an ingestion message
// (ingestion_messages.status).
type Status string

// The message statuses. All but queued and processing are terminal: the
// gateway acknowledges a message once it has one of those.
const (
	StatusQueued           Status = "queued"
	StatusProcessing       Status = "processing"
	StatusCompleted        Status = "completed"
	StatusFailedValidation Status = "failed_validation"
	StatusInactiveSkipped  Status = "inactive_skipped"
	StatusFailedTerminal   Status = "failed_terminal"
	StatusDuplicate        Status = "duplicate"
	StatusParked           Status = "parked"
)

// statuses are the message statuses in the order of their enum.
var statuses = []Status{StatusQueued, StatusProcessing, StatusCompleted, StatusFailedValidation,
	StatusInactiveSkipped, StatusFailedTerminal, StatusDuplicate, StatusParked}

// Statuses returns every message status. The slice is the caller's.
func Statuses() []Status { return slices.Clone(statuses) }

// State is the state of a telemetry row
// (device_telemetry_logs.processing_state).
type State string

// The telemetry row states.
const (
	// StatePending is persisted, with its publish in flight.
	StatePending         State = "pending"
	StateProcessed       State = "processed"
	StateInvalid         State = "invalid"
	StateInactiveSkipped State = "inactive_skipped"
	StatePublishFailed   State = "publish_failed"
)

// states are the row states in the order of their enum.
var states = []State{StatePending, StateProcessed, StateInvalid, StateInactiveSkipped, StatePublishFailed}

// States returns every telemetry row state. The slice is the caller's.
func States() []State { return slices.Clone(states) }

// Switch is a pipeline switch as `telemesh flags` and the viewer name it.
type Switch string

// The pipeline switches, global or per organization.
const (
	// SwitchPipeline pauses the gateway (global) or parks an
	// organization's messages.
	SwitchPipeline Switch = "pipeline.enabled"
	// SwitchPublishAnalytics turns the analytics events on and off.
	SwitchPublishAnalytics Switch = "publish_analytics"
	// SwitchPublishInvalidEvents turns the invalid events on and off.
	SwitchPublishInvalidEvents Switch = "publish_invalid_events"
)

// switches are the switches, the pipeline's first.
var switches = []Switch{SwitchPipeline, SwitchPublishAnalytics, SwitchPublishInvalidEvents}

// Switches returns the switches, the pipeline's first. The slice is the
// caller's.
func Switches() []Switch { return slices.Clone(switches) }

// ParseSwitch returns the switch of that name, and false when there is
// none.
func ParseSwitch(name string) (Switch, bool) {
	s := Switch(name)
	return s, slices.Contains(switches, s)
}

// Column is the switch's column in pipeline_switches.
func (s Switch) Column() string {
	if s == SwitchPipeline {
		return "pipeline_enabled"
	}
	return string(s)
}

// ReasonWidth bounds, in characters, the example reason shown beside a
// reason code wherever failures are counted by code (`telemesh status`,
// the doctor, the viewer's health panel), so one long reason does not push
// the others off the screen.
const ReasonWidth = 160
