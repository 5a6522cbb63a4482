package faults_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testutil"
)

// fault is one fault the suite injects into a fresh mesh.
type fault struct {
	name string
	// privatePostgres runs the fault's database on a private cluster the
	// fault may restart, instead of a fresh database on the shared server.
	privatePostgres bool
	// proxyPublisher puts a proxy the fault may cut between the publisher
	// and NATS.
	proxyPublisher bool
	// args are extra flags per stage, after the suite's.
	args map[string][]string
	// resend sends every tenth message again after the stream's duplicate
	// window, so only telemesh's own dedupe can catch it.
	resend bool
	// inject waits for its moment, injects the fault and returns once the
	// fault has ended (the stage restarted, the server back, ...).
	inject func(t *testing.T, e *faultEnv)
}

// faultEnv is what a fault can act on.
type faultEnv struct {
	s      suite
	db     *database
	nats   *natsServer
	pg     *privatePostgres
	proxy  *proxy
	mesh   *mesh
	driver *driver
	// driverDone is closed when the driver has published everything.
	driverDone <-chan struct{}
	// notes are what the fault says about itself, for the table.
	notes []string
}

// note records a fact about the fault for the table.
func (e *faultEnv) note(s string) { e.notes = append(e.notes, s) }

// faults returns the faults, one subtest each.
func faults() []fault {
	var out []fault
	for _, stage := range stages {
		out = append(out, fault{
			name: "kill-" + stage,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				calls := e.mesh.waitBusy(t, stage)
				e.mesh.kill(t, stage)
				e.note(fmt.Sprintf("killed with %d call(s) in flight", calls))
				time.Sleep(e.s.down)
				e.mesh.restart(t, stage)
			},
		})
	}
	return append(out,
		fault{
			name: "nats-restart",
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				e.nats.restart(t, e.s.down)
			},
		},
		fault{
			name:            "postgres-restart",
			privatePostgres: true,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				// The short form restarts at once (pg_ctl restart -m
				// fast); the long form also leaves it down a while.
				var down time.Duration
				if e.s.name == "long" {
					down = e.s.down
				}
				e.pg.restart(t, down)
			},
		},
		fault{
			// What a failover through a pooler, an idle-session timeout or
			// an operator's pg_terminate_backend does: Postgres stays up and
			// ends the stages' sessions. One message per batch, so a call
			// that fails carries a single message, which the gateway
			// dead-letters if it takes the failure for the message's own.
			name: "postgres-sessions-killed",
			args: map[string][]string{gateway: {"--batch-size", "1"}},
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				ended := 0
				for end := time.Now().Add(e.s.terminate); time.Now().Before(end); {
					var n int
					if err := e.db.Pool.QueryRow(t.Context(), `select count(*) filter (where pg_terminate_backend(pid))
						from pg_stat_activity where datname = current_database() and application_name like 'telemesh-%'`).Scan(&n); err != nil {
						t.Fatalf("end the stages' sessions: %v", err)
					}
					ended += n
					time.Sleep(150 * time.Millisecond)
				}
				if ended == 0 {
					t.Fatal("no session of a stage could be ended: the fault was not injected")
				}
			},
		},
		fault{
			name: "slow-deriver",
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				e.mesh.freeze(t, deriver)
				time.Sleep(e.s.freeze)
				e.mesh.thaw(t, deriver)
			},
		},
		fault{
			name:           "publisher-nats-cut",
			proxyPublisher: true,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				e.proxy.Cut()
				time.Sleep(e.s.cut)
				e.proxy.Restore()
			},
		},
		fault{
			name:   "late-duplicates",
			resend: true,
			inject: func(t *testing.T, e *faultEnv) {
				// The fault is the driver's resends; it ends with the last.
				select {
				case <-e.driverDone:
				case <-t.Context().Done():
				}
			},
		},
	)
}

// TestFaults injects each fault into a fresh mesh (its own database and
// NATS store) while a stream of messages flows, then checks that every
// message NATS acknowledged was stored and processed exactly once, with one
// analytics event, and nothing else was.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault suite runs every stage, NATS and Postgres as processes; `make test-faults` or a run without -short runs it")
	}
	s := currentSuite()
	var reports []*report
	t.Cleanup(func() {
		t.Logf("fault suite, %s form (%d messages per fault; recovery time runs from the end of the fault until every message NATS acknowledged has a processed row):\n%s",
			s.name, s.messages, table(reports))
	})
	for _, f := range faults() {
		t.Run(f.name, func(t *testing.T) {
			// A fault that stops half-way still gets its line.
			r := &report{fault: f.name}
			reports = append(reports, r)
			runFault(t, s, f, r)
			if !r.recovered {
				t.Errorf("%s: not every row processed, and the stream drained, within %s of the end of the fault", f.name, s.recoverWithin)
			}
			for _, c := range []struct {
				what string
				ids  []string
			}{{"lost", r.lost}, {"duplicated", r.duplicated}, {"unexpected", r.unexpected}, {"unprocessed", r.unprocessed}} {
				if len(c.ids) > 0 {
					t.Errorf("%s: %d %s: %s", f.name, len(c.ids), c.what, firstFew(c.ids))
				}
			}
		})
	}
}

// runFault runs one fault on a fresh mesh and fills in r with what the
// checker found.
func runFault(t *testing.T, s suite, f fault, r *report) {
	e := &faultEnv{s: s}
	e.nats = startNATS(t)
	if f.privatePostgres {
		e.pg, e.db = startPrivatePostgres(t)
	} else {
		tdb := testdb.New(t)
		if err := demo.Seed(t.Context(), tdb.Pool); err != nil {
			t.Fatalf("seed the demo fleet: %v", err)
		}
		e.db = &database{URL: tdb.URL, Pool: tdb.Pool}
	}
	cfg := meshConfig{databaseURL: e.db.URL, natsURL: e.nats.URL(), args: map[string][]string{}}
	for stage, args := range s.stageArgs {
		cfg.args[stage] = append([]string(nil), args...)
	}
	for stage, args := range f.args {
		cfg.args[stage] = append(cfg.args[stage], args...)
	}
	if f.proxyPublisher {
		e.proxy = startProxy(t, strings.TrimPrefix(e.nats.URL(), "nats://"))
		cfg.publisherNATS = "nats://" + e.proxy.Addr()
	}
	if f.resend && s.duplicates > 0 {
		cfg.args[gateway] = append(cfg.args[gateway], "--stream-duplicates", s.duplicates.String())
	}
	e.mesh = startMesh(t, cfg)

	js := connectNATS(t, e.nats.URL())
	stream := waitStream(t, js, "TELEMETRY")
	var resendAfter time.Duration
	if f.resend {
		info, err := stream.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		// Past the window, and a second more: the server forgets ids on a
		// timer, within 50ms of their expiry.
		resendAfter = info.Config.Duplicates + time.Second
		t.Logf("the TELEMETRY stream's duplicate window is %s; every tenth message is sent again %s after its acknowledgement",
			info.Config.Duplicates, resendAfter)
	}

	// The driver streams while the fault happens.
	streamFor := time.Duration(s.messages) * time.Second / time.Duration(s.rate)
	ctx, cancel := context.WithTimeout(t.Context(), 3*streamFor+resendAfter+s.recoverWithin)
	e.driver = newDriver(js, f.name)
	done := make(chan struct{})
	var driverErr error
	go func() {
		defer close(done)
		driverErr = e.driver.run(ctx, s.messages, s.rate, resendAfter)
	}()
	e.driverDone = done
	t.Cleanup(func() { cancel(); <-done })

	f.inject(t, e)
	faultEnd := time.Now()

	rec := e.waitRecovered(t, js, faultEnd)
	<-done
	if driverErr != nil {
		t.Errorf("driver: %v", driverErr)
	}
	if rec.done {
		// Anything late (a redelivery, a retried publish) has its chance
		// to show before the check.
		time.Sleep(s.settle)
	}
	for _, exited := range e.mesh.exited() {
		t.Errorf("a stage ended on its own: %s", exited)
	}

	published := e.driver.published()
	r.published = len(published)
	// Generous: the check reads every row and event, and a busy machine
	// only makes that slower.
	checkCtx, checkCancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer checkCancel()
	got, err := check(checkCtx, e.db.Pool, js, published)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	got.fault = f.name
	got.notes = append(got.notes, e.notes...)
	got.recovered, got.recovery = rec.done, rec.processed
	if rec.done && rec.drained-rec.processed >= time.Second {
		got.notes = append(got.notes, fmt.Sprintf("every row processed %s after the fault; the stream drained %s after it (redeliveries of messages already stored)",
			rec.processed.Round(100*time.Millisecond), rec.drained.Round(100*time.Millisecond)))
	}
	if n := e.driver.retries.Load(); n > 0 {
		got.notes = append(got.notes, fmt.Sprintf("the driver sent %d publishes again after no acknowledgement", n))
	}
	got.notes = append(got.notes, e.traces(t, checkCtx)...)
	if f.resend {
		e.checkResends(t, checkCtx, got)
	}
	if !got.ok() {
		t.Logf("stage output:\n%s", e.mesh.logs())
	}
	*r = *got
}

// traces describes what the fault left behind: messages delivered more
// than once, messages found to be duplicates, rows published only on a
// later attempt. They show the fault took effect.
func (e *faultEnv) traces(t *testing.T, ctx context.Context) []string {
	t.Helper()
	var redelivered, duplicates, republished int
	err := e.db.Pool.QueryRow(ctx, `select
			(select count(distinct dedupe_key) from ingestion_stage_logs where stage = 'ingress' and attempt > 1),
			(select count(distinct dedupe_key) from ingestion_stage_logs where status = 'duplicate'),
			(select count(*) from device_telemetry_logs where publish_attempts > 1)`).Scan(&redelivered, &duplicates, &republished)
	if err != nil {
		t.Fatalf("read what the fault left behind: %v", err)
	}
	return []string{fmt.Sprintf("%d messages delivered more than once, %d recognised as duplicates, %d rows published on a later attempt",
		redelivered, duplicates, republished)}
}

// waitStored waits until n messages have a row, so a fault lands mid-stream.
func (e *faultEnv) waitStored(t *testing.T, n int) {
	t.Helper()
	testutil.Eventually(t, startWait, fmt.Sprintf("%d messages stored before any fault", n), func() error {
		var got int
		if err := e.db.Pool.QueryRow(t.Context(), `select count(*) from ingestion_messages`).Scan(&got); err != nil {
			return err
		}
		if got < n {
			return fmt.Errorf("%d stored:\n%s", got, e.mesh.logs())
		}
		return nil
	})
}

// recovery is how a fault's mesh came back.
type recovery struct {
	// done says whether every row was processed and the stream drained
	// within the suite's bound.
	done bool
	// processed is when every published message had a processed row (and
	// no row waited for a publish), drained when, besides, the gateway's
	// consumer had nothing pending or unacknowledged; both from the end
	// of the fault.
	processed, drained time.Duration
}

// waitRecovered waits until the driver is done, every published id has a
// processed row, no row waits for a publish and the gateway's consumer has
// nothing pending or unacknowledged. It gives up at the suite's bound, or
// early once nothing is left that could change the outcome (nothing in
// the stream, no row waiting for a publish) for a few seconds.
func (e *faultEnv) waitRecovered(t *testing.T, js jetstream.JetStream, faultEnd time.Time) recovery {
	t.Helper()
	const stuckAfter = 3 * time.Second
	var (
		r          recovery
		deadline   = faultEnd.Add(e.s.recoverWithin)
		stuckSince time.Time
	)
	for time.Now().Before(deadline) {
		rowsDone, idle := e.progress(t.Context(), js)
		if rowsDone && r.processed == 0 {
			r.processed = max(time.Since(faultEnd), time.Nanosecond)
		}
		switch {
		case rowsDone && idle:
			r.done, r.drained = true, max(time.Since(faultEnd), 0)
			return r
		case idle:
			if stuckSince.IsZero() {
				stuckSince = time.Now()
			} else if time.Since(stuckSince) > stuckAfter {
				t.Logf("gave up waiting: nothing pending in the stream and no row waiting for a publish, yet not every message processed")
				return r
			}
		default:
			stuckSince = time.Time{}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return r
}

// progress reports whether every published message has a processed row
// and no row waits for a publish, and whether nothing is left to happen:
// the driver done, no row waiting for a publish, nothing pending in the
// gateway's consumer.
func (e *faultEnv) progress(ctx context.Context, js jetstream.JetStream) (rowsDone, idle bool) {
	select {
	case <-e.driverDone:
	default:
		return false, false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var processed, waiting int
	err := e.db.Pool.QueryRow(ctx, `select
			(select count(distinct m.source_message_id) from device_telemetry_logs t
				join ingestion_messages m on m.id = t.ingestion_message_id where t.processing_state = 'processed'),
			(select count(*) from device_telemetry_logs where processing_state in ('pending', 'publish_failed'))`).
		Scan(&processed, &waiting)
	if err != nil || waiting > 0 {
		return false, false
	}
	rowsDone = processed >= e.driver.count()
	cons, err := js.Consumer(ctx, "TELEMETRY", "telemesh-gateway")
	if err != nil {
		return rowsDone, false
	}
	// A message NAKed with a delay stays in NumAckPending until it is
	// redelivered.
	info, err := cons.Info(ctx)
	return rowsDone, err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

// checkResends fails the test unless the stream stored every resend anew
// (so the fault reached telemesh) and telemesh recorded each as a duplicate
// of its original.
func (e *faultEnv) checkResends(t *testing.T, ctx context.Context, r *report) {
	t.Helper()
	d := e.driver
	d.mu.Lock()
	stored, caught := append([]string(nil), d.resentStored...), append([]string(nil), d.resentCaught...)
	d.mu.Unlock()
	want := (e.s.messages + 9) / 10
	r.notes = append(r.notes, fmt.Sprintf("%d messages sent again after the duplicate window; the stream stored %d of them anew", want, len(stored)))
	if len(caught) > 0 {
		t.Errorf("the stream's own duplicate window still caught %d resends, so they never reached telemesh: %s", len(caught), firstFew(caught))
	}
	if len(stored) == 0 {
		t.Errorf("no resend was stored anew by the stream: the fault was not injected")
		return
	}
	rows, err := e.db.Pool.Query(ctx, `select distinct dedupe_key from ingestion_stage_logs where status = 'duplicate'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	dupKeys := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		dupKeys[k[strings.LastIndexByte(k, ':')+1:]] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var missed []string
	for _, id := range stored {
		if !dupKeys[id] {
			missed = append(missed, id)
		}
	}
	if len(missed) > 0 {
		t.Errorf("%d resends stored anew by the stream have no duplicate stage log: %s", len(missed), firstFew(missed))
	}
}
