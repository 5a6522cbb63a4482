package gateway

import "testing"

func TestSubjectFilter(t *testing.T) {
	f := NewSubjectFilter("iot.v1.analytics", "iot.v1.invalid.")
	tests := []struct {
		subject string
		ignored bool
	}{
		{"energy.main-energy-meter-01.telemetry", false},
		{"devices.meter-01.telemetry", false},
		{"$SYS.ACCOUNT.x.CONNECT", true},
		{"$JS.API.STREAM.INFO.x", true},
		{"$JS.ACK.telemetry.gw.1.2.3.4.5", true},
		{"$KV.device-states.abc", true},
		{"$O.store.chunk", true},
		{"_INBOX.abc.def", true},
		{"_REQS.abc", true},
		{"iot.v1.analytics.prod.acme.0190.telemetry", true},
		{"iot.v1.invalid.prod.acme.required", true},
		{"iot.v1.other.x", false},
		{"", true},
		{"$anything", true},
	}
	for _, tt := range tests {
		t.Run(tt.subject, func(t *testing.T) {
			if got := f.Ignored(tt.subject); got != tt.ignored {
				t.Errorf("Ignored(%q) = %v, want %v", tt.subject, got, tt.ignored)
			}
		})
	}
}

func TestDedupeKey(t *testing.T) {
	tests := []struct {
		name               string
		subject, id, epoch string
		seq                uint64
		want               string
	}{
		{"message id within its subject", "devices.a.telemetry", "m-1", "telemetry@1", 7, "id:devices.a.telemetry:m-1"},
		{"same id on another subject differs", "devices.b.telemetry", "m-1", "telemetry@1", 7, "id:devices.b.telemetry:m-1"},
		{"redelivery without id keeps the sequence", "devices.a.telemetry", "", "telemetry@1", 7, "seq:telemetry@1:7"},
		{"resend without id has a new sequence", "devices.a.telemetry", "", "telemetry@1", 8, "seq:telemetry@1:8"},
		{"a recreated stream does not collide", "devices.a.telemetry", "", "telemetry@2", 7, "seq:telemetry@2:7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DedupeKey(tt.subject, tt.id, tt.epoch, tt.seq); got != tt.want {
				t.Errorf("DedupeKey = %q, want %q", got, tt.want)
			}
		})
	}
}
