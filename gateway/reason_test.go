package gateway

import (
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/reason"
)

// BuildEnvelope sets the code of every reason it stops a message for, the
// same for one cause whatever the text says.
func TestBuildEnvelopeReasonCodes(t *testing.T) {
	snap, sw := fuzzSnapshot()
	tests := []struct {
		subject, id, payload string
		want                 string
	}{
		{"devices.meter-01.telemetry", "", `{"temp_c": 1}`, ""},
		{"devices.meter-01.telemetry", "", `{"temp_c": 1`, reason.InvalidJSON},
		{"devices.meter-01.telemetry", "", `{"temp_c": 12, "x": [1, 2`, reason.InvalidJSON},
		{"devices.meter-01.telemetry", "", ``, reason.InvalidJSON},
		{"devices.meter-01.telemetry", "", `[1, 2]`, reason.NotAnObject},
		{"devices.meter-01.telemetry", "", `"text"`, reason.NotAnObject},
		{"devices.ghost-1.telemetry", "", `{}`, reason.UnknownDevice},
		{"devices.ghost-2.telemetry", "", `{}`, reason.UnknownDevice},
		{"devices.meter-01.nosuchtopic", "", `{}`, reason.UnknownTopic},
		{"sensors.meter-01.telemetry", "", `{}`, reason.UnknownTopic},
		{"devices.meter-01", "", `{}`, reason.InvalidSubject},
		{"devices.meter-01.te\xfflemetry", "", `{}`, reason.InvalidSubject},
		{"devices.meter-01.telemetry", "id\x00", `{}`, reason.InvalidMessageID},
		{"devices.parked-01.telemetry", "", `{}`, reason.Parked},
	}
	for _, tt := range tests {
		e := BuildEnvelope(Incoming{Subject: tt.subject, HeaderMessageID: tt.id, Payload: []byte(tt.payload), StreamSequence: 1,
			ReceivedAt: time.Now()}, snap, sw, "epoch")
		if got := e.GetReasonCode(); got != tt.want {
			t.Errorf("%q %q %q: code %q (%s), want %q", tt.subject, tt.id, tt.payload, got, e.GetReason(), tt.want)
		}
	}
	if e := BuildEnvelope(Incoming{Subject: "devices.meter-01.telemetry", Payload: []byte(`{}`)}, nil, sw, "epoch"); e.GetReasonCode() != reason.CatalogUnavailable {
		t.Errorf("without a catalog: code %q", e.GetReasonCode())
	}
}
