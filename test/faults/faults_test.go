package faults_test

import (
	"context"
	"fmt"
	"maps"
	"strconv"
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
	// failover runs it on a primary and a synchronous standby instead,
	// reached through one multi-host URL.
	failover bool
	// cluster runs NATS as a three-node cluster, with the stream, the
	// analytics stream and the bucket at three replicas, instead of one
	// server.
	cluster bool
	// minStream lowers the driver's rate so its stream lasts at least this
	// long: a fault that takes a while happens under load.
	minStream time.Duration
	// proxyPublisher puts a proxy the fault may cut between the publisher
	// and NATS.
	proxyPublisher bool
	// args are extra flags per stage, after the suite's.
	args map[string][]string
	// resend sends every tenth message again after the stream's duplicate
	// window, so only telemesh's own dedupe can catch it.
	resend bool
	// holds, if set, is how long the fault keeps the pipeline from
	// processing on purpose (a stage frozen, NATS cut off): no message
	// published meanwhile can be processed before it ends, so the
	// longest-wait target allows it on top of its own bound. Crashes and
	// restarts hold nothing: their targets are the bare ones.
	holds func(s suite) time.Duration
	// inject waits for its moment, injects the fault and returns once the
	// fault has ended (the stage restarted, the server back, ...). It
	// marks the fault's moment, from which the recovery times run; without
	// a mark they run from its return.
	inject func(t *testing.T, e *faultEnv)
	// verify, if set, checks what the fault left once every message is
	// processed and the set check is done.
	verify func(t *testing.T, e *faultEnv)
}

// faultEnv is what a fault can act on.
type faultEnv struct {
	s       suite
	db      *database
	nats    *natsServer
	cluster *natsCluster
	pg      *privatePostgres
	pair    *pgPair
	proxy   *proxy
	mesh    *mesh
	driver  *driver
	// js is the suite's own JetStream client, on every NATS server.
	js jetstream.JetStream
	// driverDone is closed when the driver has published everything.
	driverDone <-chan struct{}
	// moment is when the fault's recovery starts (a restart, a
	// failover), and momentWhat what happened then.
	moment     time.Time
	momentWhat string
	// wiped is the cluster server whose store the fault removed.
	wiped *natsNode
	// notes are what the fault says about itself, for the table.
	notes []string
}

// note records a fact about the fault for the table.
func (e *faultEnv) note(s string) { e.notes = append(e.notes, s) }

// mark records now as the fault's moment: what the recovery times run
// from.
func (e *faultEnv) mark(what string) { e.markAt(time.Now(), what) }

func (e *faultEnv) markAt(at time.Time, what string) { e.moment, e.momentWhat = at, what }

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
				e.mark("its restart")
				e.mesh.restart(t, stage)
			},
		})
	}
	return append(out,
		fault{
			// A deploy: every stage in turn stopped with SIGTERM and
			// started again, the gateway first, as the chart's
			// Deployments roll.
			name: "stages-rolling-restart",
			// Five stops and starts, each waiting for its stage to be
			// busy: the driver streams through all of them.
			minStream: 20 * time.Second,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				for i, stage := range stages {
					// Mid-batch, as a deploy finds a busy stage.
					e.mesh.waitBusy(t, stage)
					start := time.Now()
					e.mesh.stop(t, stage)
					stopped := time.Since(start)
					if i == len(stages)-1 {
						e.mark("the restart of the last stage")
					}
					e.mesh.restart(t, stage)
					e.note(fmt.Sprintf("%s stopped (SIGTERM) in %s and serving again %s later", stage,
						stopped.Round(100*time.Millisecond), (time.Since(start) - stopped).Round(100*time.Millisecond)))
				}
			},
		},
		fault{
			name: "nats-restart",
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				e.nats.stop()
				time.Sleep(e.s.down)
				e.mark("its restart")
				e.nats.start(t)
			},
		},
		fault{
			name:            "postgres-restart",
			privatePostgres: true,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				// The short form restarts at once (pg_ctl restart -m
				// fast); the long form also leaves it down a while.
				if e.s.name != "long" {
					e.mark("pg_ctl restart")
					e.pg.restart(t)
					return
				}
				e.pg.stop(t)
				time.Sleep(e.s.down)
				e.mark("its start")
				e.pg.resume(t)
			},
		},
		fault{
			// What a failover through a pooler, an idle-session timeout or
			// an operator's pg_terminate_backend does: Postgres stays up and
			// ends the stages' sessions. One message per batch, so a call
			// that fails carries a single message, which the gateway
			// dead-letters if it takes the failure for the message's own.
			name:  "postgres-sessions-killed",
			args:  map[string][]string{gateway: {"--batch-size", "1"}},
			holds: func(s suite) time.Duration { return s.terminate },
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
			name:  "slow-deriver",
			holds: func(s suite) time.Duration { return s.freeze },
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				e.mesh.freeze(t, deriver)
				time.Sleep(e.s.freeze)
				e.mark("its SIGCONT")
				e.mesh.thaw(t, deriver)
			},
		},
		fault{
			name:           "publisher-nats-cut",
			proxyPublisher: true,
			holds:          func(s suite) time.Duration { return s.cut },
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				e.proxy.Cut()
				time.Sleep(e.s.cut)
				e.mark("the connection restored")
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
		fault{
			name:    "nats-cluster-kill-stream-leader",
			cluster: true,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				e.killNode(t, e.cluster.leader(t, e.js, "TELEMETRY"), "the leader of TELEMETRY")
			},
			verify: verifyClusterHealthy,
		},
		fault{
			name:    "nats-cluster-kill-kv-leader",
			cluster: true,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				e.killNode(t, e.cluster.leader(t, e.js, kvStream), "the leader of the device-states bucket")
			},
			verify: verifyClusterHealthy,
		},
		fault{
			// The order a StatefulSet rolls in, each server back and
			// current before the next stops.
			name:      "nats-cluster-rolling-restart",
			cluster:   true,
			minStream: 15 * time.Second,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/5)
				nodes := e.cluster.nodes
				for i := len(nodes) - 1; i >= 0; i-- {
					n := nodes[i]
					start := time.Now()
					n.stop(t)
					if i == 0 {
						e.mark("the restart of the last server")
					}
					n.start(t)
					n.waitHealthy(t, 2*time.Minute)
					e.note(fmt.Sprintf("%s stopped (SIGTERM), restarted and current again in %s", n.name, time.Since(start).Round(100*time.Millisecond)))
				}
			},
			verify: verifyClusterHealthy,
		},
		fault{
			// A server whose disk was replaced: it comes back empty under
			// its own name and must take every stream over from the others.
			name:      "nats-cluster-wiped-node",
			cluster:   true,
			minStream: 10 * time.Second,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				n := e.cluster.follower(t, e.js, "TELEMETRY")
				n.kill(t)
				n.wipe(t)
				e.note(fmt.Sprintf("%s (a follower of TELEMETRY) killed with SIGKILL and its store removed", n.name))
				time.Sleep(e.s.down)
				e.mark("its restart with an empty store")
				n.start(t)
				e.wiped = n
			},
			verify: func(t *testing.T, e *faultEnv) {
				held := e.cluster.waitCaughtUp(t, e.js, e.wiped, []string{"TELEMETRY", analyticsStream, kvStream}, 2*time.Minute)
				e.note(fmt.Sprintf("%s caught up: it holds %s, as the leaders do", e.wiped.name, held))
				verifyClusterHealthy(t, e)
			},
		},
		fault{
			name:     "postgres-failover",
			failover: true,
			inject: func(t *testing.T, e *faultEnv) {
				e.waitStored(t, e.s.messages/3)
				acked := e.ackedSoFar(t)
				old := e.pair.Primary().name
				e.markAt(e.pair.failover(t), "the promotion of the standby")
				e.note(fmt.Sprintf("primary %s killed with SIGKILL (every process of it), standby %s promoted; %d messages acknowledged to NATS before the kill",
					old, e.pair.Primary().name, len(acked)))
				// Before anything could write them again: what was
				// acknowledged is on the new primary.
				e.note(e.pair.holdsOnNewPrimary(t, acked))
			},
		},
	)
}

// killNode kills a cluster server with SIGKILL, leaves it down for the
// suite's down time and starts it again. The fault's moment is the kill:
// the cluster is meant to fail over on its own, without the restart.
func (e *faultEnv) killNode(t *testing.T, n *natsNode, role string) {
	t.Helper()
	e.mark("the kill: the others are to fail over without it")
	n.kill(t)
	e.note(fmt.Sprintf("%s, %s, killed with SIGKILL; restarted %s later", n.name, role, e.s.down))
	time.Sleep(e.s.down)
	n.start(t)
}

// verifyClusterHealthy checks that every server of the cluster is healthy
// again: back, and current on every stream it replicates.
func verifyClusterHealthy(t *testing.T, e *faultEnv) {
	t.Helper()
	e.cluster.waitHealthy(t, 2*time.Minute)
}

// ackedSoFar returns the ids of the messages the gateway has acknowledged
// so far: every stream message up to the consumer's ack floor.
func (e *faultEnv) ackedSoFar(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cons, err := e.js.Consumer(ctx, "TELEMETRY", "telemesh-gateway")
	if err != nil {
		t.Fatalf("the gateway's consumer: %v", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatalf("the gateway's consumer: %v", err)
	}
	floor := info.AckFloor.Stream
	if floor == 0 {
		return nil
	}
	stream, err := e.js.Stream(ctx, "TELEMETRY")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for seq := uint64(1); seq <= floor; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("TELEMETRY message %d: %v", seq, err)
		}
		if id := m.Header.Get("Nats-Msg-Id"); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// TestFaults injects each fault into a fresh mesh (its own database and
// NATS store) while a stream of messages flows, then checks that every
// message NATS acknowledged was stored and processed exactly once, with one
// analytics event, and nothing else was. It measures how quickly the
// pipeline came back, against targets the long form enforces.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault suite runs every stage, NATS and Postgres as processes; `make test-faults` or a run without -short runs it")
	}
	s := currentSuite()
	enforce, err := enforceTargets(s)
	if err != nil {
		t.Fatal(err)
	}
	var reports []*report
	t.Cleanup(func() {
		t.Logf("fault suite, %s form (%d messages per fault; the times run from each fault's moment, named in its notes: "+
			"moving again until the first message processed after it, time to last processed until the last of those published before it, "+
			"longest wait from a message's publish to its processed row):\n%s\n%s",
			s.name, s.messages, formTargets(enforce), table(reports))
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
			if enforce {
				for _, m := range r.timings.missed() {
					t.Errorf("%s: target missed: %s", f.name, m)
				}
			}
		})
	}
}

// runFault runs one fault on a fresh mesh and fills in r with what the
// checker found.
func runFault(t *testing.T, s suite, f fault, r *report) {
	e := &faultEnv{s: s}
	var natsURL string
	if f.cluster {
		e.cluster = startNATSCluster(t)
		natsURL = e.cluster.URLs()
	} else {
		e.nats = startNATS(t)
		natsURL = e.nats.URL()
	}
	switch {
	case f.failover:
		e.pair, e.db = startPostgresPair(t)
	case f.privatePostgres:
		e.pg, e.db = startPrivatePostgres(t)
	default:
		tdb := testdb.New(t)
		if err := demo.Seed(t.Context(), tdb.Pool); err != nil {
			t.Fatalf("seed the demo fleet: %v", err)
		}
		e.db = &database{URL: tdb.URL, Pool: tdb.Pool}
	}
	cfg := meshConfig{databaseURL: e.db.URL, natsURL: natsURL, args: map[string][]string{}}
	for stage, args := range s.stageArgs {
		cfg.args[stage] = append([]string(nil), args...)
	}
	if f.cluster {
		replicas := strconv.Itoa(clusterSize)
		cfg.args[gateway] = append(cfg.args[gateway], "--stream-replicas", replicas)
		cfg.args[publisher] = append(cfg.args[publisher], "--nats-replicas", replicas)
	}
	for stage, args := range f.args {
		cfg.args[stage] = append(cfg.args[stage], args...)
	}
	if f.proxyPublisher {
		e.proxy = startProxy(t, strings.TrimPrefix(natsURL, "nats://"))
		cfg.publisherNATS = "nats://" + e.proxy.Addr()
	}
	if f.resend && s.duplicates > 0 {
		cfg.args[gateway] = append(cfg.args[gateway], "--stream-duplicates", s.duplicates.String())
	}
	e.mesh = startMesh(t, cfg)

	e.js = connectNATS(t, natsURL)
	js := e.js
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
	rate := s.rate
	if f.minStream > 0 {
		rate = max(1, min(rate, int(time.Duration(s.messages)*time.Second/f.minStream)))
	}
	streamFor := time.Duration(s.messages) * time.Second / time.Duration(rate)
	ctx, cancel := context.WithTimeout(t.Context(), 3*streamFor+resendAfter+s.recoverWithin)
	e.driver = newDriver(js, f.name)
	done := make(chan struct{})
	var driverErr error
	go func() {
		defer close(done)
		driverErr = e.driver.run(ctx, s.messages, rate, resendAfter)
	}()
	e.driverDone = done
	t.Cleanup(func() { cancel(); <-done })

	f.inject(t, e)
	faultEnd := time.Now()
	if e.moment.IsZero() {
		e.markAt(faultEnd, "the end of the fault")
	}

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

	if e.cluster != nil {
		// The check reads the streams: from a cluster whose servers are
		// all back and current, so it does not meet a server still
		// catching up.
		e.cluster.waitHealthy(t, 2*time.Minute)
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
	got.recovered = rec.done
	got.timings, err = measureTimings(checkCtx, e.db.Pool, e.driver.ackedTimes(), e.moment)
	if err != nil {
		t.Fatalf("measure the recovery: %v", err)
	}
	got.notes = append(got.notes, fmt.Sprintf("the times run from %s", e.momentWhat))
	if f.holds != nil {
		got.timings.held = f.holds(s)
		got.notes = append(got.notes, fmt.Sprintf("the fault holds the pipeline %s on purpose: the longest-wait target is %s + %s",
			got.timings.held, targetLongestWait, got.timings.held))
	}
	// The soak's checker, held to this one on every fault.
	bulk, err := bulkCheck(checkCtx, e.db.Pool, js, maps.All(e.driver.ackedTimes()))
	if err != nil {
		t.Fatalf("bulk check: %v", err)
	}
	for _, d := range bulk.agrees(got, got.timings) {
		t.Errorf("the bulk check disagrees with the check: %s", d)
	}
	if rec.done && rec.drained-rec.processed >= time.Second {
		got.notes = append(got.notes, fmt.Sprintf("every row processed %s after the end of the fault; the stream drained %s after it (redeliveries of messages already stored)",
			rec.processed.Round(100*time.Millisecond), rec.drained.Round(100*time.Millisecond)))
	}
	if n := e.driver.retries.Load(); n > 0 {
		got.notes = append(got.notes, fmt.Sprintf("the driver sent %d publishes again after no acknowledgement", n))
	}
	got.notes = append(got.notes, e.traces(t, checkCtx)...)
	if f.resend {
		e.checkResends(t, checkCtx, got)
	}
	if f.verify != nil {
		notes := len(e.notes)
		f.verify(t, e)
		got.notes = append(got.notes, e.notes[notes:]...)
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
			return fmt.Errorf("%d stored:\n%s%s", got, e.mesh.logs(), e.natsLogs())
		}
		return nil
	})
}

// natsLogs is what the fault's NATS servers printed, when they run as a
// cluster.
func (e *faultEnv) natsLogs() string {
	if e.cluster == nil {
		return ""
	}
	var b strings.Builder
	for _, n := range e.cluster.nodes {
		b.WriteString("==== nats-" + n.name + "\n" + n.p.output() + "\n")
	}
	return b.String()
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
