package pipelinestate

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/testutil"
)

// waitPaused waits until the gateway reports, on its metrics, that it has
// stopped consuming for the global switch.
func (m *mesh) waitPaused(t *testing.T) {
	t.Helper()
	url := "http://" + m.mesh.Admin["gateway"] + "/metrics"
	testutil.Eventually(t, 30*time.Second, "the gateway paused", func() error {
		v, err := testutil.Metric(t.Context(), url, "telemesh_gateway_paused")
		if err != nil {
			return err
		}
		if v != 1 {
			return fmt.Errorf("telemesh_gateway_paused %v", v)
		}
		return nil
	})
}

// A pipeline switched off on purpose is its own state: no problem is
// listed for it, and doctor's verdict is paused with its own exit code.
func TestPausedIsNotUnhealthy(t *testing.T) {
	m := startMesh(t)
	m.publish(t, 2, "before")
	testutil.Eventually(t, 30*time.Second, "2 rows processed", func() error {
		if !(m.count(t, `select count(*) from device_telemetry_logs where processing_state = 'processed'`) == 2) {
			return errors.New("not yet")
		}
		return nil
	})
	if _, err := m.db.Pool.Exec(t.Context(), `update pipeline_switches set pipeline_enabled = false, updated_by = 'ops-oncall'
		where organization_id is null`); err != nil {
		t.Fatal(err)
	}
	m.waitPaused(t)
	m.publish(t, 4, "while-paused")
	testutil.Eventually(t, 30*time.Second, "4 messages pending in the consumer", func() error {
		c, err := m.js.Consumer(t.Context(), "TELEMETRY", "telemesh-gateway")
		if err != nil {
			return err
		}
		info, err := c.Info(t.Context())
		if err != nil {
			return err
		}
		if info.NumPending != 4 {
			return fmt.Errorf("%d pending", info.NumPending)
		}
		return nil
	})

	rep, err := Gather(t.Context(), m.config())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 0 {
		t.Errorf("a paused pipeline is listed as problems: %q", rep.Problems)
	}
	if rep.State != StatePaused || rep.Healthy() {
		t.Errorf("state %q, healthy %v; want paused, not healthy", rep.State, rep.Healthy())
	}
	if p := rep.Pause; p == nil || p.By != "ops-oncall" || p.Backlog != 4 || time.Since(p.Since) > time.Minute {
		t.Errorf("pause %+v, want by ops-oncall, a backlog of 4, since a moment ago", p)
	}

	v := doctor(t, m.config(), DoctorOptions{})
	if v.Branch != "paused" || v.ExitCode != 6 {
		t.Errorf("doctor: branch %q exit %d, want paused exit 6", v.Branch, v.ExitCode)
	}
	if ev := strings.Join(v.Evidence, "\n"); !strings.Contains(ev, "by ops-oncall") || !strings.Contains(ev, "4 messages wait") {
		t.Errorf("doctor's evidence does not say who paused and what waits:\n%s", ev)
	}

	// A fault while paused is a fault: unhealthy, not paused.
	cfg := m.config()
	cfg.Targets["deriver"] = closedPort(t)
	rep, err = Gather(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.State != StateUnhealthy || rep.Pause == nil {
		t.Errorf("with the deriver unreachable while paused: state %q, pause %+v; want unhealthy with the pause still shown", rep.State, rep.Pause)
	}
	if v := doctor(t, cfg, DoctorOptions{}); v.ExitCode != ExitNotStored {
		t.Errorf("doctor with the deriver unreachable while paused: exit %d, want %d", v.ExitCode, ExitNotStored)
	}
}

// An organization switched off parks its messages; it is shown with its
// parked count, and the mesh is neither paused nor unhealthy for it.
func TestOrganizationOffIsShownNotPaused(t *testing.T) {
	m := startMesh(t)
	if _, err := m.db.Pool.Exec(t.Context(), `insert into pipeline_switches (organization_id, pipeline_enabled, updated_by)
		select id, false, 'acme-admin' from organizations where slug = 'acme'`); err != nil {
		t.Fatal(err)
	}
	// The gateway applies the switch within a second; a message taken
	// before then completes, so publish until three are parked.
	for i := 0; m.count(t, `select count(*) from ingestion_messages where status = 'parked'`) < 3; i++ {
		if i > 200 {
			t.Fatal("no three messages parked after 200 tries")
		}
		m.publish(t, 1, fmt.Sprintf("org-off-%d", i))
		testutil.Eventually(t, 30*time.Second, "the message recorded", func() error {
			if !(m.count(t, fmt.Sprintf(`select count(*) from ingestion_messages where source_message_id = 'org-off-%d-0'`, i)) == 1) {
				return errors.New("not yet")
			}
			return nil
		})
	}
	rep, err := Gather(t.Context(), m.config())
	if err != nil {
		t.Fatal(err)
	}
	if rep.State != StateHealthy || rep.Pause != nil {
		t.Errorf("state %q, pause %+v; want healthy and not paused: %q", rep.State, rep.Pause, rep.Problems)
	}
	if len(rep.OrganizationsOff) != 1 || rep.OrganizationsOff[0].Organization != "acme" || rep.OrganizationsOff[0].By != "acme-admin" ||
		rep.OrganizationsOff[0].Parked != 3 {
		t.Errorf("organizations off %+v, want acme by acme-admin with 3 parked", rep.OrganizationsOff)
	}
}
