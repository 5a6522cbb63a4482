package pipelinestate

import (
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/health"
	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/stagelog"
)

// c is a count of n messages of one stage, status and code.
func c(stage, status, code string, n int64) Count {
	return Count{Stage: stage, Status: status, Code: code, Count: n}
}

func TestActivityFigures(t *testing.T) {
	for _, tt := range []struct {
		name                     string
		counts                   []Count
		received, failed         int64
		percent                  float64
		failures, publishReasons []string
	}{
		{name: "nothing happened"},
		{
			name: "every stage completed",
			counts: []Count{c("ingress", "completed", "", 10), c("validate", "completed", "", 10),
				c("persist", "completed", "", 10), c("publish", "completed", "", 10)},
			received: 10,
		},
		{
			// A retried delivery is counted once it ends, and a parked or
			// duplicate message was received all the same.
			name: "retries, parked and duplicates are received, not failed",
			counts: []Count{c("ingress", "completed", "", 6), c("ingress", "retrying", "transient", 4),
				c("ingress", "parked", "parked", 2), c("validate", "duplicate", "duplicate", 1)},
			received: 8,
		},
		{
			name: "every way a message fails",
			counts: []Count{
				c("ingress", "completed", "", 12), c("ingress", "halted", "invalid_json", 3), c("ingress", "failed", "dead_lettered", 1),
				c("validate", "halted", "max", 4), c("persist", "failed", "unstorable", 1), c("publish", "failed", "kv_unavailable", 2),
			},
			received: 16, failed: 11, percent: 100 * 11.0 / 16,
			failures:       []string{"validate/halted/max 4", "ingress/halted/invalid_json 3", "publish/failed/kv_unavailable 2", "ingress/failed/dead_lettered 1", "persist/failed/unstorable 1"},
			publishReasons: []string{"publish/failed/kv_unavailable 2"},
		},
		{
			// An inactive device's message is evidence kept on purpose; a
			// mutation that failed leaves its value unresolved and the
			// message goes on. The second is listed among the failures, the
			// first is not, and neither fails its message.
			name: "inactive devices and failed mutations do not fail messages",
			counts: []Count{c("ingress", "completed", "", 5), c("validate", "halted", "inactive", 2),
				c("mutate", "failed", "evaluation_error", 3), c("derive", "unresolved", "missing_input", 3)},
			received: 5,
			failures: []string{"mutate/failed/evaluation_error 3"},
		},
		{
			// Only retries failed in the window: no message failed in it, and
			// the cause is still listed so its reason shows.
			name:           "a publish failing only on retries",
			counts:         []Count{c("ingress", "completed", "", 1), c("publish", "failed", "kv_unavailable", 0)},
			received:       1,
			failures:       []string{"publish/failed/kv_unavailable 0"},
			publishReasons: []string{"publish/failed/kv_unavailable 0"},
		},
		{
			name:     "more failures than messages received caps the rate",
			counts:   []Count{c("ingress", "completed", "", 1), c("publish", "failed", "kv_unavailable", 3)},
			received: 1, failed: 3, percent: 100,
			failures:       []string{"publish/failed/kv_unavailable 3"},
			publishReasons: []string{"publish/failed/kv_unavailable 3"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := Activity{Minutes: 5, Counts: tt.counts}
			if got := a.Received(); got != tt.received {
				t.Errorf("received %d, want %d", got, tt.received)
			}
			if got := a.Failed(); got != tt.failed {
				t.Errorf("failed %d, want %d", got, tt.failed)
			}
			if got := a.FailedPercent(); got != tt.percent {
				t.Errorf("failed %v %%, want %v", got, tt.percent)
			}
			if got := lines(a.Failures(0)); !reflect.DeepEqual(got, tt.failures) {
				t.Errorf("failures %q, want %q", got, tt.failures)
			}
			if got := lines(a.PublishFailures(0)); !reflect.DeepEqual(got, tt.publishReasons) {
				t.Errorf("publish reasons %q, want %q", got, tt.publishReasons)
			}
		})
	}
}

// lines writes counts as "stage/status/code count".
func lines(counts []Count) []string {
	var out []string
	for _, c := range counts {
		out = append(out, c.Stage+"/"+c.Status+"/"+c.Code+" "+strconv.FormatInt(c.Count, 10))
	}
	return out
}

func TestFailuresAreLimitedToTheMostFrequent(t *testing.T) {
	a := Activity{Counts: []Count{c("ingress", "halted", "unknown_device", 1), c("validate", "halted", "max", 5),
		c("validate", "halted", "min", 5), c("ingress", "halted", "invalid_json", 2)}}
	want := []string{"validate/halted/max 5", "validate/halted/min 5"}
	if got := lines(a.Failures(2)); !reflect.DeepEqual(got, want) {
		t.Errorf("the two most frequent %q, want %q (ties by code)", got, want)
	}
}

func TestSortCounts(t *testing.T) {
	counts := []Count{c("publish", "completed", "", 9), c("ingress", "halted", "unknown_device", 1),
		c("validate", "halted", "max", 2), c("ingress", "completed", "", 9), c("ingress", "halted", "invalid_json", 3)}
	sortCounts(counts)
	want := []string{"ingress/completed/ 9", "ingress/halted/invalid_json 3", "ingress/halted/unknown_device 1",
		"validate/halted/max 2", "publish/completed/ 9"}
	if got := lines(counts); !reflect.DeepEqual(got, want) {
		t.Errorf("sorted %q, want %q: chain order, status, the largest first", got, want)
	}
}

func TestStageStats(t *testing.T) {
	h := make([]int64, stagelog.Buckets)
	for _, us := range []int64{100, 200, 300, 400, 10000} {
		h[stagelog.Bucket(us)]++
	}
	a := Activity{Minutes: 5, Counts: []Count{c("persist", "completed", "", 4), c("persist", "failed", "unstorable", 1),
		c("validate", "halted", "inactive", 2), c("validate", "completed", "", 1)},
		Durations: map[string][]int64{"persist": h}}
	got := a.StageStats()
	if len(got) != 6 || got[0].Stage != "ingress" || got[5].Stage != "publish" {
		t.Fatalf("stages %+v, want the six in chain order", got)
	}
	near := func(got, want int64) bool {
		return float64(got) > float64(want)/1.42 && float64(got) < float64(want)*1.42
	}
	persist, validate := got[4], got[1]
	if persist.Count != 5 || persist.Failed != 1 || persist.PerSecond != 5.0/300 || !near(persist.P50US, 300) || !near(persist.P99US, 10000) {
		t.Errorf("persist %+v; want 5, 1 failed, 5 in 300 s, p50 about 300 and p99 about 10000", persist)
	}
	// A halted message is halted whatever the code, in a stage's own row.
	if validate.Count != 3 || validate.Failed != 2 || validate.P50US != 0 {
		t.Errorf("validate %+v; want 3 of which 2 halted, no durations", validate)
	}
	if got[0] != (StageStats{Stage: "ingress"}) {
		t.Errorf("ingress %+v, want an empty row", got[0])
	}
}

func TestPauses(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.FixedZone("x", 3600))
	acme, globex := uuid.New(), uuid.New()
	on := ops.Switches{PipelineEnabled: true, PublishAnalytics: true, PublishInvalidEvents: true}
	off := ops.Switches{PublishAnalytics: true, PublishInvalidEvents: true}
	global := func(s ops.Switches, exists bool) ops.SwitchRow {
		return ops.SwitchRow{Exists: exists, Switches: s, Effective: s, UpdatedAt: &at, UpdatedBy: "ops-oncall"}
	}
	org := func(id uuid.UUID, slug string, s ops.Switches, exists bool) ops.SwitchRow {
		return ops.SwitchRow{OrganizationID: &id, Organization: slug, Exists: exists, Switches: s, UpdatedAt: &at, UpdatedBy: "org-admin"}
	}
	consumer := &ConsumerInfo{Pending: 7, AckPending: 2}
	for _, tt := range []struct {
		name     string
		switches []ops.SwitchRow
		consumer *ConsumerInfo
		pause    *Pause
		orgsOff  []OrganizationOff
	}{
		{name: "no switches"},
		{name: "everything on", switches: []ops.SwitchRow{global(on, true), org(acme, "acme", on, true)}, consumer: consumer},
		{
			name:     "the global switch off pauses with the consumer's pending as the backlog",
			switches: []ops.SwitchRow{global(off, true), org(acme, "acme", on, false)}, consumer: consumer,
			pause: &Pause{Since: at.UTC(), By: "ops-oncall", Backlog: 7},
		},
		{
			name:     "a pause without a consumer has no backlog",
			switches: []ops.SwitchRow{global(off, true)},
			pause:    &Pause{Since: at.UTC(), By: "ops-oncall"},
		},
		{
			name:     "a global row that is not stored is on",
			switches: []ops.SwitchRow{global(off, false)}, consumer: consumer,
		},
		{
			// An organization without a row of its own follows the global
			// switches; only its own row switches it off.
			name: "an organization switched off parks, named by slug, else by id",
			switches: []ops.SwitchRow{global(on, true), org(acme, "acme", off, true), org(globex, "", off, true),
				org(uuid.New(), "initech", on, false)},
			consumer: consumer,
			orgsOff: []OrganizationOff{{Organization: "acme", Since: at.UTC(), By: "org-admin", Parked: 3},
				{Organization: globex.String(), Since: at.UTC(), By: "org-admin"}},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := PauseOf(tt.switches, tt.consumer); !reflect.DeepEqual(got, tt.pause) {
				t.Errorf("pause %+v, want %+v", got, tt.pause)
			}
			parked := map[string]int64{"acme": 3, GlobalSwitch: 9}
			if got := OrganizationsOff(tt.switches, parked); !reflect.DeepEqual(got, tt.orgsOff) {
				t.Errorf("organizations off %+v, want %+v", got, tt.orgsOff)
			}
		})
	}
}

func TestReportState(t *testing.T) {
	cfg := DefaultConfig()
	serving := []health.StageHealth{{Stage: "gateway", Target: "a:1", Status: health.Serving}}
	for _, tt := range []struct {
		name     string
		rep      Report
		state    string
		problems []string
	}{
		{name: "nothing wrong", rep: Report{Stages: serving}, state: StateHealthy},
		{name: "paused", rep: Report{Stages: serving, Pause: &Pause{}}, state: StatePaused},
		{
			name:     "a stage down",
			rep:      Report{Stages: []health.StageHealth{{Stage: "validator", Target: "b:2", Status: "UNREACHABLE"}}},
			state:    StateUnhealthy,
			problems: []string{"stage validator (b:2) is UNREACHABLE"},
		},
		{
			// A pause never hides a fault.
			name:     "a fault while paused",
			rep:      Report{Stages: serving, Pause: &Pause{}, Errors: map[string]string{"stream": "gone", "bucket": "missing"}},
			state:    StateUnhealthy,
			problems: []string{"bucket: missing", "stream: gone"},
		},
		{
			name:     "a consumer on another stream",
			rep:      Report{Stages: serving, Consumer: &ConsumerInfo{Name: "c", Stream: "OTHER"}},
			state:    StateUnhealthy,
			problems: []string{"consumer c is bound to stream OTHER, not TELEMETRY"},
		},
		{
			name:     "rows failing to publish",
			rep:      Report{Stages: serving, Minutes: 5, PublishFailed: 9, PublishFailedRecent: 2},
			state:    StateUnhealthy,
			problems: []string{"2 publish_failed rows in the last 5 minutes"},
		},
		{
			// Rows that failed before the window and wait for their next
			// attempt are shown, but are not a problem of now.
			name:  "old publish failures",
			rep:   Report{Stages: serving, Minutes: 5, PublishFailed: 9},
			state: StateHealthy,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rep := tt.rep
			rep.Problems = problems(&rep, cfg)
			if got := rep.state(); got != tt.state || rep.Healthy() != (tt.state == StateHealthy) {
				t.Errorf("state %q (healthy %v), want %q", got, rep.Healthy(), tt.state)
			}
			if !reflect.DeepEqual(rep.Problems, tt.problems) {
				t.Errorf("problems %q, want %q", rep.Problems, tt.problems)
			}
		})
	}
}

func TestOrganizationName(t *testing.T) {
	for _, tt := range []struct{ id, slug, want string }{
		{"", "", GlobalSwitch}, {"", "acme", GlobalSwitch}, {"0190", "acme", "acme"}, {"0190", "", "0190"},
	} {
		if got := OrganizationName(tt.id, tt.slug); got != tt.want {
			t.Errorf("OrganizationName(%q, %q) = %q, want %q", tt.id, tt.slug, got, tt.want)
		}
	}
}
