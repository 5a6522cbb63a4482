package faults_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// EnvTargets switches the recovery targets between "enforce" (a missed
// target fails the fault) and "report" (the table says PASS or FAIL and
// nothing fails on it). The long form enforces by default, the short form
// reports: on a busy CI machine its short timeouts are not production's.
const EnvTargets = "TELEMESH_FAULTS_TARGETS"

// The recovery targets, counted from the fault's moment (the restart of
// what was killed, the failover, the end of the disturbance): the pipeline
// moving again, the last message processed, and no message waiting longer
// from its publish to its processed row.
const (
	targetMoving      = 5 * time.Second
	targetLast        = 10 * time.Second
	targetLongestWait = 10 * time.Second
)

// enforceTargets reports whether a missed target fails the fault: the
// value of EnvTargets, else whether the form is the long one.
func enforceTargets(s suite) (bool, error) {
	switch v := os.Getenv(EnvTargets); v {
	case "enforce":
		return true, nil
	case "report":
		return false, nil
	case "":
		return s.name == "long", nil
	default:
		return false, fmt.Errorf("%s=%q: want enforce or report", EnvTargets, v)
	}
}

// timings is how quickly the pipeline came back from a fault.
type timings struct {
	// settled says that every message was processed before the fault's
	// moment: nothing was left to wait for, and moving and last are
	// not measured.
	settled bool
	// moving runs from the fault's moment to the first message processed
	// after it, last to the last processed of the messages published
	// before it: the backlog the fault held up. Messages published later
	// flow as the driver sends them; the longest wait judges those.
	moving, last time.Duration
	// longestWait is the longest time from a message's acknowledgement by
	// NATS to its processed row, and longestID the message that waited it.
	longestWait time.Duration
	longestID   string
	// measured says the times were read; a fault that failed before its
	// check has none.
	measured bool
	// held is how long the fault kept the pipeline from processing on
	// purpose; the longest-wait target allows it on top.
	held time.Duration
}

// target is one recovery target's result.
type target struct {
	what  string
	got   time.Duration
	limit time.Duration
	// na is set when the target does not apply (nothing left to process).
	na bool
}

func (g target) pass() bool { return g.na || g.got <= g.limit }

// cell renders the target for the table: the time and PASS or FAIL.
func (g target) cell() string {
	if g.na {
		return "- PASS"
	}
	verdict := "PASS"
	if !g.pass() {
		verdict = "FAIL"
	}
	return g.got.Round(100*time.Millisecond).String() + " " + verdict
}

// targets returns the three targets of the timings.
func (tm timings) targets() []target {
	return []target{
		{what: "moving again", got: tm.moving, limit: targetMoving, na: tm.settled},
		{what: "last processed", got: tm.last, limit: targetLast, na: tm.settled},
		{what: "longest wait", got: tm.longestWait, limit: targetLongestWait + tm.held},
	}
}

// missed describes the targets the timings miss, one line each.
func (tm timings) missed() []string {
	var out []string
	for _, g := range tm.targets() {
		if !g.pass() {
			line := fmt.Sprintf("%s %s after the fault's moment, target %s", g.what, g.got.Round(100*time.Millisecond), g.limit)
			if g.what == "longest wait" {
				line = fmt.Sprintf("message %s waited %s from its publish to its processed row, target %s",
					tm.longestID, g.got.Round(100*time.Millisecond), g.limit)
			}
			out = append(out, line)
		}
	}
	return out
}

// measureTimings reads when each published message was processed and
// measures the fault's timings against moment. acked holds when NATS first
// acknowledged each id. Clocks agree: Postgres and the suite run on one
// machine.
func measureTimings(ctx context.Context, pool *pgxpool.Pool, acked map[string]time.Time, moment time.Time) (timings, error) {
	rows, err := pool.Query(ctx, `select m.source_message_id, t.processed_at from device_telemetry_logs t
		join ingestion_messages m on m.id = t.ingestion_message_id
		where t.processing_state = 'processed' and t.processed_at is not null and m.source_message_id is not null`)
	if err != nil {
		return timings{}, fmt.Errorf("read processed times: %w", err)
	}
	type processed struct {
		id string
		at time.Time
	}
	got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (processed, error) {
		var p processed
		err := row.Scan(&p.id, &p.at)
		return p, err
	})
	if err != nil {
		return timings{}, fmt.Errorf("read processed times: %w", err)
	}
	tm := timings{measured: true}
	var first, last time.Time
	for _, p := range got {
		ackedAt, ok := acked[p.id]
		if !ok {
			continue // not the driver's: the checker reports it
		}
		if w := p.at.Sub(ackedAt); w > tm.longestWait {
			tm.longestWait, tm.longestID = w, p.id
		}
		if ackedAt.Before(moment) && p.at.After(last) {
			last = p.at
		}
		if !p.at.Before(moment) && (first.IsZero() || p.at.Before(first)) {
			first = p.at
		}
	}
	if first.IsZero() {
		tm.settled = true
		return tm, nil
	}
	tm.moving, tm.last = first.Sub(moment), max(last.Sub(moment), 0)
	return tm, nil
}

// formTargets describes, for the suite's log, whether the targets decide
// the outcome.
func formTargets(enforce bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "targets: moving again within %s and the last message published before the fault's moment processed within %s of it, no message waiting more than %s; ",
		targetMoving, targetLast, targetLongestWait)
	if enforce {
		b.WriteString("enforced (" + EnvTargets + "=report to only report them)")
	} else {
		b.WriteString("reported, not enforced (" + EnvTargets + "=enforce to enforce them)")
	}
	return b.String()
}

func TestTargets(t *testing.T) {
	for _, c := range []struct {
		name   string
		tm     timings
		cells  []string
		missed int
	}{
		{"all met", timings{moving: 400 * time.Millisecond, last: 3 * time.Second, longestWait: 4 * time.Second},
			[]string{"400ms PASS", "3s PASS", "4s PASS"}, 0},
		{"a gateway's ack wait", timings{moving: 2 * time.Second, last: 58 * time.Second, longestWait: 60 * time.Second, longestID: "m-1"},
			[]string{"2s PASS", "58s FAIL", "1m0s FAIL"}, 2},
		{"stalled", timings{moving: 12 * time.Second, last: 12 * time.Second, longestWait: 9 * time.Second},
			[]string{"12s FAIL", "12s FAIL", "9s PASS"}, 2},
		{"everything processed before the moment", timings{settled: true, longestWait: time.Second},
			[]string{"- PASS", "- PASS", "1s PASS"}, 0},
		{"exactly at the limits", timings{moving: targetMoving, last: targetLast, longestWait: targetLongestWait},
			[]string{"5s PASS", "10s PASS", "10s PASS"}, 0},
		{"a stage frozen for 20s", timings{moving: time.Second, last: 3 * time.Second, longestWait: 24 * time.Second, held: 20 * time.Second},
			[]string{"1s PASS", "3s PASS", "24s PASS"}, 0},
		{"longer than the fault held it", timings{moving: time.Second, last: 3 * time.Second, longestWait: 31 * time.Second, held: 20 * time.Second, longestID: "m-2"},
			[]string{"1s PASS", "3s PASS", "31s FAIL"}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var cells []string
			for _, g := range c.tm.targets() {
				cells = append(cells, g.cell())
			}
			if strings.Join(cells, "|") != strings.Join(c.cells, "|") {
				t.Errorf("cells = %q, want %q", cells, c.cells)
			}
			if got := c.tm.missed(); len(got) != c.missed {
				t.Errorf("missed = %q, want %d lines", got, c.missed)
			}
		})
	}
}

func TestEnforceTargets(t *testing.T) {
	for _, c := range []struct {
		env, form string
		want      bool
		err       bool
	}{
		{"", "short", false, false},
		{"", "long", true, false},
		{"report", "long", false, false},
		{"enforce", "short", true, false},
		{"yes", "long", false, true},
	} {
		t.Setenv(EnvTargets, c.env)
		got, err := enforceTargets(suite{name: c.form})
		if got != c.want || (err != nil) != c.err {
			t.Errorf("%s=%q, %s form: enforce %t, err %v; want %t, error %t", EnvTargets, c.env, c.form, got, err, c.want, c.err)
		}
	}
}

func TestTable(t *testing.T) {
	out := table([]*report{
		{fault: "kill-gateway", published: 300, stored: 300, recovered: true,
			timings: timings{measured: true, moving: time.Second, last: 58 * time.Second, longestWait: 60 * time.Second}},
		{fault: "late-duplicates", published: 300, stored: 300, recovered: true,
			timings: timings{measured: true, settled: true, longestWait: 300 * time.Millisecond}},
		{fault: "nats-restart", published: 300, stored: 120, lost: []string{"a"}},
	})
	lines := strings.Split(out, "\n")
	for _, want := range [][]string{
		{"fault", "moving again", "time to last processed", "longest wait"},
		{"kill-gateway", "1s PASS", "58s FAIL", "1m0s FAIL"},
		{"late-duplicates", "- PASS", "- PASS", "300ms PASS"},
		{"nats-restart", "NOT RECOVERED"},
	} {
		found := false
		for _, l := range lines {
			if strings.HasPrefix(strings.TrimSpace(l), want[0]) {
				found = true
				for _, cell := range want[1:] {
					if !strings.Contains(l, cell) {
						t.Errorf("line %q lacks %q", l, cell)
					}
				}
			}
		}
		if !found {
			t.Errorf("no line for %s in\n%s", want[0], out)
		}
	}
}
