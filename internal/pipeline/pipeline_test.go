package pipeline_test

import (
	"slices"
	"strings"
	"testing"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/pipeline"
)

// enumNames returns an enum's value names, in number order, without the
// unspecified value, lower case and without prefix: the stored names.
func enumNames(values map[int32]string, prefix string) []string {
	var out []string
	for n := int32(1); n < int32(len(values)); n++ {
		name, ok := values[n]
		if !ok {
			break
		}
		out = append(out, strings.ToLower(strings.TrimPrefix(name, prefix)))
	}
	return out
}

func strs[T ~string](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = string(x)
	}
	return out
}

func TestNamesMatchTheProtoEnums(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want []string
	}{
		{"stages in chain order", strs(pipeline.Stages()), enumNames(telemetryv1.Stage_name, "STAGE_")},
		{"stage statuses", strs(pipeline.StageStatuses()), enumNames(telemetryv1.StageStatus_name, "STAGE_STATUS_")},
		{"message statuses", strs(pipeline.Statuses()), enumNames(telemetryv1.MessageStatus_name, "MESSAGE_STATUS_")},
		{"row states", strs(pipeline.States()), enumNames(telemetryv1.ProcessingState_name, "PROCESSING_STATE_")},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s: pipeline has %q, telemetry.v1 %q", c.name, c.got, c.want)
		}
	}
}

func TestStageOrder(t *testing.T) {
	for i, s := range pipeline.Stages() {
		if s.Order() != i {
			t.Errorf("%s.Order() = %d, want %d", s, s.Order(), i)
		}
	}
	if got := pipeline.Stage("nope").Order(); got != len(pipeline.Stages()) {
		t.Errorf("an unknown stage's order is %d, want it last", got)
	}
}

func TestStageService(t *testing.T) {
	var got []string
	for _, s := range pipeline.Stages() {
		if sv := string(s.Service()); len(got) == 0 || got[len(got)-1] != sv {
			got = append(got, sv)
		}
	}
	if !slices.Equal(got, pipeline.ServiceNames()) {
		t.Fatalf("the stages' services in chain order are %q, want %q", got, pipeline.ServiceNames())
	}
	if pipeline.Stage("nope").Service() != "" {
		t.Fatal("an unknown stage has a service")
	}
}

func TestServicesInChainOrder(t *testing.T) {
	want := []string{"gateway", "validator", "deriver", "persister", "publisher"}
	if got := pipeline.ServiceNames(); !slices.Equal(got, want) {
		t.Fatalf("services %q, want %q", got, want)
	}
	s := pipeline.Stages()
	s[0] = "changed"
	if pipeline.Stages()[0] != pipeline.Ingress {
		t.Fatal("a caller changed the chain")
	}
}

func TestSwitches(t *testing.T) {
	cols := map[pipeline.Switch]string{
		pipeline.SwitchPipeline:             "pipeline_enabled",
		pipeline.SwitchPublishAnalytics:     "publish_analytics",
		pipeline.SwitchPublishInvalidEvents: "publish_invalid_events",
	}
	for _, s := range pipeline.Switches() {
		if s.Column() != cols[s] {
			t.Errorf("%s.Column() = %q, want %q", s, s.Column(), cols[s])
		}
		if got, ok := pipeline.ParseSwitch(string(s)); !ok || got != s {
			t.Errorf("ParseSwitch(%q) = %q, %v", s, got, ok)
		}
	}
	if _, ok := pipeline.ParseSwitch("pipeline_enabled"); ok {
		t.Error("a column name parsed as a switch name")
	}
}
