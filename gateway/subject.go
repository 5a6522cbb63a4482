package gateway

import (
	"strconv"
	"strings"
)

// internalPrefixes are subjects NATS and its clients use for themselves:
// system events, JetStream and KV APIs, object stores, inboxes and request
// subjects. They are never telemetry, however wide the configured scope.
var internalPrefixes = []string{"$SYS.", "$JS.", "$KV.", "$O.", "$JSC.", "$NRG.", "$MQTT.", "_INBOX.", "_REQS.", "_R_."}

// SubjectFilter decides which subjects are telemetry.
type SubjectFilter struct {
	// ownPrefixes are telemesh's own output subjects, so a wide scope never
	// feeds the pipeline its own analytics back.
	ownPrefixes []string
}

// NewSubjectFilter returns a filter that also ignores the given output
// prefixes (such as iot.v1.analytics. and iot.v1.invalid.).
func NewSubjectFilter(ownPrefixes ...string) *SubjectFilter {
	f := &SubjectFilter{}
	for _, p := range ownPrefixes {
		if p != "" && !strings.HasSuffix(p, ".") {
			p += "."
		}
		f.ownPrefixes = append(f.ownPrefixes, p)
	}
	return f
}

// Ignored reports whether subject is internal, a system subject or one of
// telemesh's own outputs.
func (f *SubjectFilter) Ignored(subject string) bool {
	if subject == "" || strings.HasPrefix(subject, "$") {
		// Every $-prefixed subject is reserved by NATS.
		return true
	}
	for _, p := range internalPrefixes {
		if strings.HasPrefix(subject, p) {
			return true
		}
	}
	for _, p := range f.ownPrefixes {
		if strings.HasPrefix(subject, p) {
			return true
		}
	}
	return false
}

// DedupeKey returns the key that identifies a message across redeliveries:
// the device's own message id within its subject when it has one, else the
// JetStream stream sequence. A redelivery keeps its stream sequence, so it is
// always a duplicate; a device resending without an id gets a new sequence,
// so it is not. streamEpoch names the stream and when it was created, so a
// stream deleted and made again, whose sequences restart at 1, never collides
// with keys already stored.
func DedupeKey(subject, messageID, streamEpoch string, streamSeq uint64) string {
	if messageID != "" {
		return "id:" + subject + ":" + messageID
	}
	return "seq:" + streamEpoch + ":" + strconv.FormatUint(streamSeq, 10)
}
