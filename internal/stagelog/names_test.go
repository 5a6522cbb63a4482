package stagelog

import (
	"testing"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/envelope"
)

// A stored name reads back as its stage or status; anything else is
// unspecified.
func TestNamesReadBack(t *testing.T) {
	stages := []struct {
		name string
		want telemetryv1.Stage
	}{
		{envelope.StageIngress, telemetryv1.Stage_STAGE_INGRESS},
		{envelope.StageValidate, telemetryv1.Stage_STAGE_VALIDATE},
		{envelope.StageMutate, telemetryv1.Stage_STAGE_MUTATE},
		{envelope.StageDerive, telemetryv1.Stage_STAGE_DERIVE},
		{envelope.StagePersist, telemetryv1.Stage_STAGE_PERSIST},
		{envelope.StagePublish, telemetryv1.Stage_STAGE_PUBLISH},
		{"", telemetryv1.Stage_STAGE_UNSPECIFIED},
		{"unspecified", telemetryv1.Stage_STAGE_UNSPECIFIED},
		{"bogus", telemetryv1.Stage_STAGE_UNSPECIFIED},
	}
	for _, tt := range stages {
		if got := StageFromName(tt.name); got != tt.want {
			t.Errorf("StageFromName(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
	for v := range telemetryv1.StageStatus_name {
		s := telemetryv1.StageStatus(v)
		if s == telemetryv1.StageStatus_STAGE_STATUS_UNSPECIFIED {
			continue
		}
		if got := StatusFromName(StatusName(s)); got != s {
			t.Errorf("StatusFromName(%q) = %v, want %v", StatusName(s), got, s)
		}
	}
	for _, name := range []string{"", "bogus", "unspecified"} {
		if got := StatusFromName(name); got != telemetryv1.StageStatus_STAGE_STATUS_UNSPECIFIED {
			t.Errorf("StatusFromName(%q) = %v, want unspecified", name, got)
		}
	}
	if got := StatusFromName(StatusCompleted); got != telemetryv1.StageStatus_STAGE_STATUS_COMPLETED {
		t.Errorf("StatusFromName(%q) = %v, want completed", StatusCompleted, got)
	}
}
