package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"buf.build/go/protovalidate"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/bound"
	"github.com/telemesh/telemesh/internal/catalog"
)

// fuzzSnapshot is a small fleet: one organization, devices meter-01 and
// x';drop (a SQL-looking external id) under devices.*.telemetry, and
// parked-01 of an organization whose switch is off.
func fuzzSnapshot() (*catalog.Snapshot, *catalog.Switches) {
	s := &catalog.Snapshot{
		Organizations:       map[uuid.UUID]*catalog.Organization{},
		DeviceTypes:         map[uuid.UUID]*catalog.DeviceType{},
		Topics:              map[uuid.UUID]*catalog.Topic{},
		Devices:             map[uuid.UUID]*catalog.Device{},
		DevicesByExternalID: map[string]*catalog.Device{},
	}
	sw := &catalog.Switches{Global: catalog.PipelineSwitch{PipelineEnabled: true}, PerOrg: map[uuid.UUID]catalog.PipelineSwitch{}}
	for i, org := range []string{"acme", "parked"} {
		o := &catalog.Organization{ID: uuid.NewSHA1(uuid.NameSpaceOID, []byte(org)), Slug: org}
		s.Organizations[o.ID] = o
		sw.PerOrg[o.ID] = catalog.PipelineSwitch{PipelineEnabled: i == 0}
		dt := &catalog.DeviceType{ID: uuid.NewSHA1(o.ID, []byte("type")), OrganizationID: o.ID, BaseTopic: "devices", Topics: map[string]*catalog.Topic{}}
		s.DeviceTypes[dt.ID] = dt
		topic := &catalog.Topic{ID: uuid.NewSHA1(dt.ID, []byte("telemetry")), DeviceTypeID: dt.ID, Suffix: "telemetry"}
		dt.Topics[topic.Suffix] = topic
		s.Topics[topic.ID] = topic
		ids := []string{"meter-01", "x';drop_table_devices;--"}
		if i == 1 {
			ids = []string{"parked-01"}
		}
		for _, ext := range ids {
			d := &catalog.Device{ID: uuid.NewSHA1(dt.ID, []byte(ext)), OrganizationID: o.ID, DeviceTypeID: dt.ID, ExternalID: ext, Active: true}
			s.Devices[d.ID] = d
			s.DevicesByExternalID[ext] = d
		}
	}
	return s, sw
}

// FuzzSubject checks the subject filter, the subject parser and the
// envelope built from any subject, header message id and payload NATS can
// deliver:
//
//   - a subject the filter accepts never starts with $ or an internal prefix
//     (_INBOX., _REQS., _R_.) or telemesh's own output prefixes, and one it
//     ignores always does (or is empty);
//   - a subject that resolves is exactly <base>.<device>.<topic> of the
//     device and topic it resolves to, and the device's canonical subject,
//     by external id and by uuid, resolves back to it;
//   - the envelope can always be sent and stored: it marshals (valid UTF-8
//     strings), passes the request rules every stage enforces, its subject
//     and ids hold no NUL and are within their bounds (subject 512 bytes,
//     message id 256, dedupe key 1024, reason 4096), and its dedupe key is
//     the message id within its subject when there is a clean one (cut and
//     hashed when longer than its limit), else the stream sequence;
//   - a message goes on only when its subject resolved, its subject and id
//     are within their limits and its payload is a JSON object; every halt
//     has a reason.
func FuzzSubject(f *testing.F) {
	for _, s := range []struct{ subject, header, payload string }{
		{"devices.meter-01.telemetry", "m-1", `{"temp_c": 1}`},
		{"devices.meter-01.telemetry", "", `{"message_id": "p-1", "temp_c": 1}`},
		{"devices.meter-01.telemetry", "", `{"id": 42}`},
		{"devices.meter-01.telemetry", "", `{"msg_id": 123456789012345678901234567890}`},
		{"devices.x';drop_table_devices;--.telemetry", "", `{}`},
		{"devices.parked-01.telemetry", "", `{}`},
		{"devices." + uuid.NewSHA1(uuid.NewSHA1(uuid.NewSHA1(uuid.NameSpaceOID, []byte("acme")), []byte("type")), []byte("meter-01")).String() + ".telemetry", "", `{}`},
		{"devices.meter-01.nosuchtopic", "", `{}`},
		{"energy.meter-01.telemetry", "", `{}`},
		{"devices.meter-01.telemetry.extra", "", `{}`},
		{"devices..telemetry", "", `{}`},
		{"devices.*.telemetry", "", `{}`},
		{"devices.\xff\xfe.telemetry", "", `{}`},
		{"devices.a\x00b.telemetry", "", `{}`},
		{"devices.meter-01.telemetry", "bad\xffid", `{}`},
		{"devices.meter-01.telemetry", "", `{"message_id": "a\u0000b"}`},
		{"devices.meter-01.telemetry", strings.Repeat("h", 257), `{}`},
		{"devices.meter-01.telemetry", strings.Repeat("é", 128), `{}`},
		{"devices.meter-01.telemetry", "", `{"message_id": "` + strings.Repeat("p", 300) + `"}`},
		{"devices." + strings.Repeat("d", 600) + ".telemetry", "", `{}`},
		{"devices." + strings.Repeat("d", 600) + ".telemetry", "m-1", `{}`},
		{"devices.meter-01.telemetry", "", `{"temp_c": NaN}`},
		{"devices.meter-01.telemetry", "", `[1]`},
		{"devices.meter-01.telemetry", "", ``},
		{"devices.meter-01.telemetry", "", "\x00\xff"},
		{"$SYS.ACCOUNT.x.CONNECT", "", `{}`},
		{"$JS.API.STREAM.INFO.TELEMETRY", "", `{}`},
		{"$KV.device-states.x", "", `{}`},
		{"_INBOX.abc.def", "", `{}`},
		{"_REQS.x", "", `{}`},
		{"_R_.x", "", `{}`},
		{"iot.v1.analytics.local.acme.x.telemetry", "", `{}`},
		{"iot.v1.invalid.local.acme.required", "", `{}`},
		{"iot.v1.analyticsx.y", "", `{}`},
		{"", "", `{}`},
	} {
		f.Add(s.subject, s.header, []byte(s.payload))
	}
	filter := NewSubjectFilter("iot.v1.analytics", "iot.v1.invalid")
	snap, switches := fuzzSnapshot()
	validator, err := protovalidate.New()
	if err != nil {
		f.Fatal(err)
	}
	received := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, subject, header string, payload []byte) {
		internal := subject == "" || strings.HasPrefix(subject, "$")
		for _, p := range []string{"_INBOX.", "_REQS.", "_R_.", "iot.v1.analytics.", "iot.v1.invalid."} {
			internal = internal || strings.HasPrefix(subject, p)
		}
		if ignored := filter.Ignored(subject); ignored != internal {
			t.Fatalf("Ignored(%q) = %v, want %v", subject, ignored, internal)
		}

		res, rerr := snap.Resolve(subject)
		if rerr == nil {
			parts := strings.Split(subject, ".")
			if len(parts) != 3 || parts[0] != res.DeviceType.BaseTopic || parts[2] != res.Topic.Suffix {
				t.Fatalf("Resolve(%q) = device type %q topic %q", subject, res.DeviceType.BaseTopic, res.Topic.Suffix)
			}
			if parts[1] != res.Device.ExternalID {
				if u, err := uuid.Parse(parts[1]); err != nil || u != res.Device.ID {
					t.Fatalf("Resolve(%q) = device %s (%s)", subject, res.Device.ID, res.Device.ExternalID)
				}
			}
			for _, tok := range []string{res.Device.ExternalID, res.Device.ID.String()} {
				canonical := res.DeviceType.BaseTopic + "." + tok + "." + res.Topic.Suffix
				back, err := snap.Resolve(canonical)
				if err != nil || back.Device != res.Device || back.Topic != res.Topic {
					t.Fatalf("canonical subject %q of %q does not resolve back: %v", canonical, subject, err)
				}
			}
		} else if rerr.Error() == "" {
			t.Fatalf("Resolve(%q): an error without a reason", subject)
		}

		e := BuildEnvelope(Incoming{Subject: subject, Payload: payload, HeaderMessageID: header, StreamSequence: 7, Delivery: 1, ReceivedAt: received},
			snap, switches, "TELEMETRY@1")
		if _, err := proto.Marshal(e); err != nil {
			t.Fatalf("envelope of %q / %q cannot be sent: %v", subject, header, err)
		}
		if err := validator.Validate(e); err != nil {
			t.Fatalf("envelope of %q / %q breaks the request rules: %v", subject, header, err)
		}
		for _, f := range []struct {
			name, s string
			max     int
		}{
			{"subject", e.GetSourceSubject(), MaxSubjectBytes}, {"source id", e.GetSourceMessageId(), MaxMessageIDBytes},
			{"dedupe key", e.GetDedupeKey(), bound.MaxKeyBytes}, {"reason", e.GetReason(), bound.MaxReasonBytes},
		} {
			if !utf8.ValidString(f.s) || strings.IndexByte(f.s, 0) >= 0 || len(f.s) > f.max {
				t.Fatalf("%s %.100q (%d bytes) cannot be stored as text within %d bytes", f.name, f.s, len(f.s), f.max)
			}
		}
		id, isObject := PayloadMessageID(payload)
		if header != "" {
			id = header
		}
		clean := utf8.ValidString(subject) && strings.IndexByte(subject, 0) < 0 && utf8.ValidString(id) && strings.IndexByte(id, 0) < 0
		fits := len(subject) <= MaxSubjectBytes && len(id) <= MaxMessageIDBytes
		// A subject or id over its limit is kept cut, ending with the
		// SHA-256 of the whole.
		cutSubject, cutID := subject, id
		if len(subject) > MaxSubjectBytes {
			cutSubject = subject[:MaxSubjectBytes-74]
			for !utf8.RuneStart(subject[len(cutSubject)]) {
				cutSubject = cutSubject[:len(cutSubject)-1]
			}
			cutSubject += bound.Hash(subject)
		}
		if len(id) > MaxMessageIDBytes {
			cutID = id[:MaxMessageIDBytes-74]
			for !utf8.RuneStart(id[len(cutID)]) {
				cutID = cutID[:len(cutID)-1]
			}
			cutID += bound.Hash(id)
		}
		wantKey := "seq:TELEMETRY@1:7"
		if clean && id != "" {
			wantKey = "id:" + cutSubject + ":" + cutID
		}
		if e.GetDedupeKey() != wantKey {
			t.Fatalf("dedupe key %q, want %q", e.GetDedupeKey(), wantKey)
		}
		if clean && (e.GetSourceSubject() != cutSubject || e.GetSourceMessageId() != cutID) {
			t.Fatalf("clean subject %q and id %q stored as %q and %q", subject, id, e.GetSourceSubject(), e.GetSourceMessageId())
		}
		if isObject {
			trimmed := bytes.TrimLeft(payload, " \t\r\n")
			if !json.Valid(payload) || trimmed[0] != '{' {
				t.Fatalf("PayloadMessageID(%q) calls it an object", payload)
			}
		}
		switch e.GetStatus() {
		case telemetryv1.MessageStatus_MESSAGE_STATUS_PROCESSING, telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED:
			if rerr != nil || !clean || !fits || !isObject || e.GetDeviceUuid() != res.Device.ID.String() || e.GetTopicId() != res.Topic.ID.String() {
				t.Fatalf("%q / %q / %q goes on as %s: resolve %v, clean %v, within limits %v, object %v", subject, header, payload, e.GetStatus(), rerr, clean, fits, isObject)
			}
			parked := !switches.OrgEnabled(res.Organization.ID)
			if parked != (e.GetStatus() == telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED) {
				t.Fatalf("status %s for an organization with pipeline.enabled %v", e.GetStatus(), !parked)
			}
		case telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL:
			if e.GetReason() == "" || e.GetHaltedStage() != telemetryv1.Stage_STAGE_INGRESS {
				t.Fatalf("halted without a reason: %v", e)
			}
			if rerr == nil && clean && fits && isObject {
				t.Fatalf("%q / %q halted: %s", subject, payload, e.GetReason())
			}
			if rerr == nil && clean && len(id) > MaxMessageIDBytes && e.GetReason() != fmt.Sprintf("message id of %d bytes exceeds the limit of 256 bytes", len(id)) {
				t.Fatalf("id of %d bytes halted with %q", len(id), e.GetReason())
			}
		default:
			t.Fatalf("status %s", e.GetStatus())
		}
	})
}
