package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/pipelinestate"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/testutil"
	"github.com/telemesh/telemesh/services/viewer"
)

// startViewer runs a viewer in this process on the live mesh, showing the
// health of its stages, and returns its base URL.
func (lm *liveMesh) startViewer(t *testing.T) string {
	t.Helper()
	cfg := viewer.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.HealthEvery, cfg.SlowEvery = 200*time.Millisecond, 200*time.Millisecond
	cfg.ShutdownGrace = stopGrace
	cfg.Targets = map[string]string{}
	for stage, addr := range lm.mesh.GRPC {
		cfg.Targets[stage] = addr
	}
	nc, err := nats.Connect(lm.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	srv, err := viewer.New(cfg, viewer.Deps{Pool: lm.db.Pool, NATS: nc}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("viewer: %v", err)
		}
	})
	return "http://" + srv.Addr()
}

// viewerHealth reads the viewer's health panel.
func viewerHealth(t *testing.T, base string) (viewer.Health, error) {
	t.Helper()
	var h viewer.Health
	res, err := http.Get(base + "/api/health")
	if err != nil {
		return h, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return h, fmt.Errorf("/api/health: %s", res.Status)
	}
	return h, json.NewDecoder(res.Body).Decode(&h)
}

// TestStatusAndViewerAgree brings a mesh into a state with something in
// every part of it (messages completed and failed for several causes,
// publishes failed, an organization switched off with parked messages, the
// pipeline paused with a backlog) and checks that `telemesh status
// --json`, `telemesh doctor --json` and the viewer's /api/health give the
// same figures for it.
func TestStatusAndViewerAgree(t *testing.T) {
	// A failed publish waits an hour for its next attempt, so the state
	// holds still while status and the viewer read it.
	lm := startLiveMesh(t, func(o *app.Options) {
		o.Publisher.RetryBase, o.Publisher.RetryMax = time.Hour, time.Hour
	})
	base := lm.startViewer(t)
	publish := func(subject, id, payload string) {
		t.Helper()
		msg := nats.NewMsg(subject)
		msg.Data = []byte(payload)
		msg.Header.Set("Nats-Msg-Id", id)
		if _, err := lm.js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}

	// Completed, malformed, from an unknown device, over a maximum.
	publish("devices.thermo-01.telemetry", "ok-1", `{"temp_c": 20}`)
	publish("devices.thermo-02.telemetry", "ok-2", `{"temp_c": 21}`)
	publish("devices.thermo-01.telemetry", "cut-1", `{"temp_c": 1`)
	publish("devices.ghost-1.telemetry", "ghost-1", `{"temp_c": 1}`)
	publish("devices.thermo-01.telemetry", "max-1", `{"temp_c": 500}`)
	lm.waitCount(t, 2, countProcessed)
	lm.waitCount(t, 3, `select count(*) from ingestion_messages where status in ('failed_terminal', 'failed_validation')`)

	// globex switched off parks its messages; one taken before the switch
	// applies completes, so publish until two are parked.
	opsExec(t, lm.db, `insert into pipeline_switches (organization_id, pipeline_enabled, updated_by)
		select id, false, 'globex-admin' from organizations where slug = 'globex'`)
	sent := 0
	testutil.Eventually(t, testWait, "two globex messages parked", func() error {
		if lm.count(t, `select count(*) from ingestion_messages where source_message_id like 'org-off-%'`) == sent {
			if lm.count(t, `select count(*) from ingestion_messages where status = 'parked'`) >= 2 {
				return nil
			}
			sent++
			publish("energy.main-energy-meter-01.telemetry", fmt.Sprintf("org-off-%d", sent), `{"power_w": 1500}`)
		}
		return errors.New("not yet")
	})

	// Publishing fails for two messages once the KV bucket is gone.
	if err := lm.js.DeleteKeyValue(t.Context(), "device-states"); err != nil {
		t.Fatal(err)
	}
	publish("devices.thermo-01.telemetry", "kv-1", `{"temp_c": 22}`)
	publish("devices.thermo-02.telemetry", "kv-2", `{"temp_c": 23}`)
	lm.waitCount(t, 2, countPubFailed)

	// The pipeline paused, with three messages waiting in the stream.
	opsExec(t, lm.db, `update pipeline_switches set pipeline_enabled = false, updated_by = 'ops-oncall' where organization_id is null`)
	lm.waitGatewayPaused(t)
	for i := range 3 {
		publish("devices.thermo-01.telemetry", fmt.Sprintf("paused-%d", i), `{"temp_c": 20}`)
	}
	lm.waitPending(t, 3)
	parked := lm.count(t, `select count(*) from ingestion_messages where status = 'parked'`)

	asked := time.Now()
	out, stderr, code := lm.run(t, "status", "--json")
	var rep pipelinestate.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 {
		t.Fatalf("status --json: exit %d (want 1: publishes fail), %v\n%s\n%s", code, err, out, stderr)
	}
	out, stderr, code = lm.run(t, "doctor", "--json", "--window", "200ms")
	var verdict pipelinestate.Verdict
	if err := json.Unmarshal([]byte(out), &verdict); err != nil || code != pipelinestate.ExitPublishing || verdict.Report == nil {
		t.Fatalf("doctor --json: exit %d (want %d), %v\n%s\n%s", code, pipelinestate.ExitPublishing, err, out, stderr)
	}

	// What status says, to begin with.
	if rep.PublishFailed != 2 || rep.PublishFailedRecent != 2 || rep.Parked != parked || rep.Pause == nil ||
		rep.Pause.By != "ops-oncall" || rep.Pause.Backlog != 3 || len(rep.OrganizationsOff) != 1 || rep.OrganizationsOff[0].Parked != parked {
		t.Errorf("status: publish_failed %d (%d recent), parked %d, pause %+v, organizations off %+v; want 2 (2), %d, by ops-oncall with 3 waiting, globex with %d parked",
			rep.PublishFailed, rep.PublishFailedRecent, rep.Parked, rep.Pause, rep.OrganizationsOff, parked, parked)
	}
	lines := map[string]pipelinestate.StageCount{}
	for _, c := range rep.Throughput {
		lines[c.Stage+"/"+c.Status+"/"+c.Code] = c
	}
	for key, n := range map[string]int{
		"ingress/halted/invalid_json": 1, "ingress/halted/unknown_device": 1, "validate/halted/max": 1,
		"publish/failed/kv_unavailable": 2, "ingress/parked/parked": parked,
	} {
		if lines[key].Count != n || (key != "ingress/parked/parked" && lines[key].Example == "") {
			t.Errorf("status: %s is %+v, want %d with an example", key, lines[key], n)
		}
	}

	var h viewer.Health
	testutil.Eventually(t, testWait, "a panel computed after status ran", func() error {
		var err error
		if h, err = viewerHealth(t, base); err != nil {
			return err
		}
		if !h.At.After(asked) || !h.SlowAt.After(asked) {
			return fmt.Errorf("panel of %s, one-hour figures of %s", h.At, h.SlowAt)
		}
		return nil
	})

	// The same figures on the page.
	var diffs []string
	differ := func(what string, cli, page any) {
		if !reflect.DeepEqual(cli, page) {
			diffs = append(diffs, fmt.Sprintf("%s: status %v, viewer %v", what, cli, page))
		}
	}
	for _, st := range h.Stages {
		var n, failed int64
		for _, c := range rep.Throughput {
			if c.Stage == st.Stage {
				n += int64(c.Count)
				if c.Status == stagelog.StatusHalted || c.Status == stagelog.StatusFailed {
					failed += int64(c.Count)
				}
			}
		}
		differ("messages of "+st.Stage, n, st.Count)
		differ("failed messages of "+st.Stage, failed, st.Failed)
	}
	pageFailures := map[string]string{}
	for _, f := range h.Failures5m {
		pageFailures[f.Stage+"/"+f.Status+"/"+f.Code] = fmt.Sprintf("%d × %s", f.Count, f.Example)
	}
	cliFailures := map[string]string{}
	for _, c := range rep.Throughput {
		if (c.Status == stagelog.StatusHalted || c.Status == stagelog.StatusFailed) && c.Code != "inactive" {
			cliFailures[c.Stage+"/"+c.Status+"/"+c.Code] = fmt.Sprintf("%d × %s", c.Count, c.Example)
		}
	}
	differ("failures by reason", cliFailures, pageFailures)
	var pagePublish, doctorPublish []string
	for _, f := range h.Failures5m {
		if f.Stage == "publish" && f.Status == stagelog.StatusFailed {
			pagePublish = append(pagePublish, fmt.Sprintf("%d × %s (e.g. %s)", f.Count, f.Code, f.Example))
		}
	}
	for _, r := range verdict.Report.PublishFailedReasons {
		doctorPublish = append(doctorPublish, pipelinestate.ReasonLine(r))
	}
	differ("publish failures by reason (doctor)", doctorPublish, pagePublish)
	differ("publish_failed rows", int64(rep.PublishFailed), h.PublishFailed.Total)
	differ("publish_failed rows listed", min(rep.PublishFailed, 10), len(h.PublishFailed.Latest))
	differ("parked", int64(rep.Parked), h.Parked)
	differ("pause", rep.Pause, h.Pause)
	if h.Backlog == nil || rep.Consumer == nil || rep.Stream == nil {
		diffs = append(diffs, fmt.Sprintf("backlog: status %+v %+v, viewer %+v", rep.Stream, rep.Consumer, h.Backlog))
	} else {
		differ("backlog", []any{rep.Stream.Messages, rep.Consumer.Pending, rep.Consumer.AckPending, rep.Consumer.Redelivered, rep.Consumer.WaitingPulls},
			[]any{h.Backlog.StreamMessages, h.Backlog.Pending, h.Backlog.AckPending, h.Backlog.Redelivered, h.Backlog.Waiting})
	}
	var cliSwitches, pageSwitches []string
	for _, s := range rep.Switches {
		cliSwitches = append(cliSwitches, fmt.Sprintf("%s %t %t %t %s", s.Organization, s.PipelineEnabled, s.PublishAnalytics, s.PublishInvalidEvents, s.UpdatedBy))
	}
	for _, s := range h.Switches {
		if s.Exists {
			name := s.Organization
			if s.OrganizationID == nil {
				name = pipelinestate.GlobalSwitch
			}
			pageSwitches = append(pageSwitches, fmt.Sprintf("%s %t %t %t %s", name, s.Switches.PipelineEnabled, s.Switches.PublishAnalytics,
				s.Switches.PublishInvalidEvents, s.UpdatedBy))
		}
	}
	differ("switches", cliSwitches, pageSwitches)
	var cliStages, pageStages []string
	for _, s := range rep.Stages {
		cliStages = append(cliStages, s.Stage+" "+s.Status)
	}
	for _, s := range h.StageHealth {
		pageStages = append(pageStages, s.Stage+" "+s.Status)
	}
	differ("stage health", cliStages, pageStages)
	if len(diffs) > 0 {
		t.Errorf("status and the viewer disagree:\n%s", strings.Join(diffs, "\n"))
	}
	// The failure rate is the page's alone; it is made of the same counts.
	if r := h.Rate5m; r.Failed != 5 || r.Messages != int64(lines["ingress/completed/"].Count+2+parked) {
		t.Errorf("five-minute rate %+v; want the 5 failed of the messages the gateway took", r)
	}
}
