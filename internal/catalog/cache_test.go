package catalog

import (
	"testing"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/pipeline"
)

func TestSwitchOn(t *testing.T) {
	org := uuid.New()
	s := &Switches{
		Global: PipelineSwitch{PipelineEnabled: true, PublishAnalytics: true, PublishInvalidEvents: false},
		PerOrg: map[uuid.UUID]PipelineSwitch{org: {PipelineEnabled: true, PublishAnalytics: false, PublishInvalidEvents: true}},
	}
	for _, c := range []struct {
		org  uuid.UUID
		sw   pipeline.Switch
		want bool
	}{
		{uuid.New(), pipeline.SwitchPipeline, true},
		{uuid.New(), pipeline.SwitchPublishAnalytics, true},
		{uuid.New(), pipeline.SwitchPublishInvalidEvents, false},
		// Both the global row and the organization's must be on.
		{org, pipeline.SwitchPipeline, true},
		{org, pipeline.SwitchPublishAnalytics, false},
		{org, pipeline.SwitchPublishInvalidEvents, false},
		{org, pipeline.Switch("nope"), false},
	} {
		if got := s.For(c.org).On(c.sw); got != c.want {
			t.Errorf("org %s, %s: %v, want %v", c.org, c.sw, got, c.want)
		}
	}
}
