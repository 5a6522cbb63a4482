package viewer

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/telemesh/telemesh/internal/testutil"
)

// A pipeline switched off on purpose shows as paused, with since when, by
// whom and the backlog, never as a failure-rate badge.
func TestHealthBadgePaused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "TELEMETRY", Subjects: []string{"devices.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateOrUpdateConsumer(ctx, "TELEMETRY", jetstream.ConsumerConfig{Durable: "telemesh-gateway", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := e.js.Publish(ctx, "devices.d1.telemetry", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	var running Health
	if got := e.do(http.MethodGet, "/api/health", "", nil, &running); got != http.StatusOK {
		t.Fatalf("health: %d", got)
	}
	if running.Badge != BadgeStable || running.Pause != nil {
		t.Errorf("a running pipeline: badge %q, pause %+v; want %q and no pause", running.Badge, running.Pause, BadgeStable)
	}

	e.exec(`update pipeline_switches set pipeline_enabled = false, updated_by = 'ops-oncall' where organization_id is null`)
	var h Health
	testutil.Eventually(t, 30*time.Second, "the badge paused", func() error {
		h = Health{}
		e.do(http.MethodGet, "/api/health", "", nil, &h)
		if h.Badge != BadgePaused {
			return fmt.Errorf("badge %q", h.Badge)
		}
		return nil
	})
	if p := h.Pause; p == nil || p.By != "ops-oncall" || p.Backlog != 2 || time.Since(p.Since) > time.Minute {
		t.Errorf("pause %+v, want since a moment ago, by ops-oncall and a backlog of 2", h.Pause)
	}
	// The failure rate is still there beside the pause.
	if h.Rate5m.Badge != BadgeStable {
		t.Errorf("five-minute rate %+v", h.Rate5m)
	}

	e.exec(`update pipeline_switches set pipeline_enabled = true, updated_by = 'ops-oncall' where organization_id is null`)
	testutil.Eventually(t, 30*time.Second, "the badge back to the failure rate", func() error {
		h = Health{}
		e.do(http.MethodGet, "/api/health", "", nil, &h)
		if h.Badge != BadgeStable || h.Pause != nil {
			return fmt.Errorf("badge %q, pause %+v", h.Badge, h.Pause)
		}
		return nil
	})
}
