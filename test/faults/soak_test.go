package faults_test

import (
	"context"
	"fmt"
	"iter"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/ops"
	publisherstage "github.com/telemesh/telemesh/services/publisher"
)

// The soak's settings. TestSoak runs only when EnvSoakDuration is set, as
// `make soak` does: it takes as long as it is told to.
const (
	// EnvSoakDuration is how long the soak publishes (a Go duration).
	EnvSoakDuration = "TELEMESH_SOAK_DURATION"
	// EnvSoakRate is how many messages per second it publishes.
	EnvSoakRate = "TELEMESH_SOAK_RATE"
	// EnvSoakSeed seeds the nemesis; a run prints its seed, and the same
	// seed makes the same choices of faults, targets and pauses again, in
	// the same order (how many fit in the run depends on how long each
	// took).
	EnvSoakSeed = "TELEMESH_SOAK_SEED"
)

// defaultSoakRate is about half of what one two-core machine sustains with
// every stage-log row written (DESIGN.md §8).
const defaultSoakRate = 2500

// The nemesis waits between soakEveryMin and soakEveryMax between faults.
const (
	soakEveryMin = 20 * time.Second
	soakEveryMax = 60 * time.Second
)

// soakSettings are a soak run's settings.
type soakSettings struct {
	duration time.Duration
	rate     int
	seed     uint64
}

// readSoakSettings reads the soak's settings; run is false when
// EnvSoakDuration is not set.
func readSoakSettings() (s soakSettings, run bool, err error) {
	d := os.Getenv(EnvSoakDuration)
	if d == "" {
		return s, false, nil
	}
	if s.duration, err = time.ParseDuration(d); err != nil || s.duration <= 0 {
		return s, false, fmt.Errorf("%s=%q: want a positive duration such as 30m", EnvSoakDuration, d)
	}
	s.rate = defaultSoakRate
	if v := os.Getenv(EnvSoakRate); v != "" {
		if s.rate, err = strconv.Atoi(v); err != nil || s.rate < 1 {
			return s, false, fmt.Errorf("%s=%q: want a positive number of messages per second", EnvSoakRate, v)
		}
	}
	if v := os.Getenv(EnvSoakSeed); v != "" {
		if s.seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			return s, false, fmt.Errorf("%s=%q: want a seed a run printed (an unsigned integer)", EnvSoakSeed, v)
		}
	} else {
		s.seed = uint64(time.Now().UnixNano())
	}
	return s, true, nil
}

// soak is what the nemesis acts on: a three-node NATS cluster, a Postgres
// primary with a synchronous standby, and every stage as its own process.
type soak struct {
	cluster *natsCluster
	pair    *pgPair
	db      *database
	mesh    *mesh
	js      jetstream.JetStream
}

// nemesisFault is one kind of fault the nemesis picks from. run injects it
// with choices drawn from rng, waits until it is over, and says what it
// did.
type nemesisFault struct {
	name string
	run  func(t *testing.T, s *soak, rng *rand.Rand) string
}

// nemesisFaults are the faults of the suite the soak draws from.
var nemesisFaults = []nemesisFault{
	{"kill-stage", func(t *testing.T, s *soak, rng *rand.Rand) string {
		stage := stages[rng.IntN(len(stages))]
		down := time.Duration(1+rng.IntN(5)) * time.Second
		s.mesh.kill(t, stage)
		time.Sleep(down)
		s.mesh.restart(t, stage)
		return fmt.Sprintf("%s killed with SIGKILL, restarted %s later", stage, down)
	}},
	{"kill-nats-node", func(t *testing.T, s *soak, rng *rand.Rand) string {
		n := s.cluster.nodes[rng.IntN(len(s.cluster.nodes))]
		down := time.Duration(1+rng.IntN(10)) * time.Second
		n.kill(t)
		time.Sleep(down)
		n.start(t)
		n.waitHealthy(t, 5*time.Minute)
		return fmt.Sprintf("nats-server %s killed with SIGKILL, restarted %s later and current again", n.name, down)
	}},
	{"postgres", func(t *testing.T, s *soak, rng *rand.Rand) string {
		if rng.IntN(2) == 0 {
			p := s.pair.Primary()
			p.restart(t)
			return fmt.Sprintf("primary %s restarted (pg_ctl restart -m fast)", p.name)
		}
		old := s.pair.Primary().name
		s.pair.failover(t)
		s.pair.rebuildStandby(t)
		return fmt.Sprintf("primary %s killed with SIGKILL, standby %s promoted; %s rebuilt as its synchronous standby",
			old, s.pair.Primary().name, old)
	}},
	{"pause", func(t *testing.T, s *soak, rng *rand.Rand) string {
		off := time.Duration(2+rng.IntN(14)) * time.Second
		s.setSwitch(t, "", false)
		time.Sleep(off)
		s.setSwitch(t, "", true)
		return fmt.Sprintf("pipeline.enabled off globally for %s", off)
	}},
	{"park", func(t *testing.T, s *soak, rng *rand.Rand) string {
		org := []string{"acme", "globex"}[rng.IntN(2)]
		off := time.Duration(2+rng.IntN(14)) * time.Second
		s.setSwitch(t, org, false)
		time.Sleep(off)
		s.setSwitch(t, org, true)
		return fmt.Sprintf("organization %s parked for %s", org, off)
	}},
	{"delete-kv", func(t *testing.T, s *soak, rng *rand.Rand) string {
		off := time.Duration(2+rng.IntN(9)) * time.Second
		retry(t, "delete the device-states bucket", func(ctx context.Context) error {
			return s.js.DeleteKeyValue(ctx, "device-states")
		})
		time.Sleep(off)
		// What an operator does: the publisher's own setup, which makes
		// the bucket as the publisher would at its start.
		cfg := publisherstage.DefaultNATSConfig()
		cfg.Replicas = clusterSize
		retry(t, "create the device-states bucket again", func(ctx context.Context) error {
			_, err := publisherstage.Setup(ctx, s.js, cfg)
			return err
		})
		return fmt.Sprintf("device-states bucket deleted, created again %s later", off)
	}},
}

// setSwitch turns pipeline.enabled on or off, globally or for org.
func (s *soak) setSwitch(t *testing.T, org string, on bool) {
	t.Helper()
	retry(t, fmt.Sprintf("set pipeline.enabled %t for %q", on, org), func(ctx context.Context) error {
		return ops.SetSwitch(ctx, s.db.Pool, org, "pipeline.enabled", on, "telemesh-soak")
	})
}

// retry runs fn until it succeeds, for two minutes at most: a nemesis
// step must not fail on the disturbance another left behind.
func retry(t *testing.T, what string, fn func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err := fn(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// nemesisEvent is one fault the nemesis injected.
type nemesisEvent struct {
	at, took time.Duration
	fault    string
	detail   string
}

// TestSoak publishes at a steady rate for a long while on the replicated
// setup (three NATS servers, a Postgres primary with a synchronous
// standby) while a nemesis injects a random fault every 20 to 60 seconds,
// then checks the whole run as the fault suite checks one fault and prints
// the seed, the faults and a latency histogram.
func TestSoak(t *testing.T) {
	settings, run, err := readSoakSettings()
	if err != nil {
		t.Fatal(err)
	}
	if !run || testing.Short() {
		t.Skip("the soak runs with `make soak` (" + EnvSoakDuration + " set, without -short)")
	}
	n := int(settings.duration.Seconds() * float64(settings.rate))
	t.Logf("soak: %s at %d msg/s (%d messages), nemesis every %s to %s, seed %d (%s=%d, or make soak SOAK_SEED=%d, replays its choices)",
		settings.duration, settings.rate, n, soakEveryMin, soakEveryMax, settings.seed, EnvSoakSeed, settings.seed, settings.seed)

	s := &soak{cluster: startNATSCluster(t)}
	s.pair, s.db = startPostgresPair(t)
	replicas := strconv.Itoa(clusterSize)
	s.mesh = startMesh(t, meshConfig{databaseURL: s.db.URL, natsURL: s.cluster.URLs(), args: map[string][]string{
		gateway:   {"--stream-replicas", replicas},
		publisher: {"--nats-replicas", replicas},
	}})
	s.js = connectNATS(t, s.cluster.URLs())
	waitStream(t, s.js, "TELEMETRY")

	// The driver gets the run's length and then as long again to finish
	// its retries; the nemesis stops when the driver has published all.
	d := newPacedDriver(s.js, n, settings.rate)
	ctx, cancel := context.WithTimeout(t.Context(), 2*settings.duration+10*time.Minute)
	defer cancel()
	done := make(chan struct{})
	var driverErr error
	start := time.Now()
	go func() {
		defer close(done)
		driverErr = d.run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })

	rng := rand.New(rand.NewPCG(settings.seed, 0))
	var events []nemesisEvent
nemesis:
	for {
		wait := soakEveryMin + time.Duration(rng.Int64N(int64(soakEveryMax-soakEveryMin)))
		select {
		case <-done:
			break nemesis
		case <-time.After(wait):
		}
		f := nemesisFaults[rng.IntN(len(nemesisFaults))]
		at := time.Now()
		detail := f.run(t, s, rng)
		ev := nemesisEvent{at: at.Sub(start), took: time.Since(at), fault: f.name, detail: detail}
		events = append(events, ev)
		t.Logf("%8s  %-15s %s (took %s); %d of %d messages acknowledged so far",
			ev.at.Round(100*time.Millisecond), ev.fault, ev.detail, ev.took.Round(100*time.Millisecond), d.acknowledged(), n)
	}
	if driverErr != nil {
		t.Errorf("driver: %v", driverErr)
	}
	published := time.Since(start)
	t.Logf("the driver published %d messages in %s (%.0f msg/s), %d publishes sent again after no acknowledgement",
		d.acknowledged(), published.Round(time.Second), float64(d.acknowledged())/published.Seconds(), d.retries.Load())

	drained, ok := s.waitProcessed(t, d, 15*time.Minute)
	if !ok {
		t.Errorf("not every message processed within 15 minutes of the driver's last publish")
	} else {
		t.Logf("every message processed %s after the driver's last publish", drained.Round(100*time.Millisecond))
	}
	for _, exited := range s.mesh.exited() {
		t.Errorf("a stage ended on its own: %s", exited)
	}

	// The check reads the streams from a cluster whose servers are all
	// back and current.
	s.cluster.waitHealthy(t, 2*time.Minute)
	checkCtx, checkCancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer checkCancel()
	r, err := bulkCheck(checkCtx, s.db.Pool, s.js, d.ackedSeq())
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "soak, seed %d: %d faults\n", settings.seed, len(events))
	counts := map[string]int{}
	for _, ev := range events {
		counts[ev.fault]++
	}
	for _, f := range nemesisFaults {
		fmt.Fprintf(&b, "  %-15s %d\n", f.name, counts[f.name])
	}
	fmt.Fprintf(&b, "set check: %s", r.summary())
	b.WriteString(r.histogram())
	b.WriteString("longest waits:\n")
	for _, w := range r.longest {
		fmt.Fprintf(&b, "  %s waited %s, acknowledged at %s; %s\n", w.id, roundWait(w.wait),
			w.acked.Sub(start).Round(100*time.Millisecond), faultsWhileWaiting(events, w.acked.Sub(start), w.acked.Add(w.wait).Sub(start)))
	}
	t.Log(b.String())
	if !r.ok() {
		t.Errorf("the set check failed: %s", r.summary())
	}
}

// faultsWhileWaiting names the faults the nemesis was injecting between a
// message's acknowledgement and its processed row: what may have held it up.
func faultsWhileWaiting(events []nemesisEvent, acked, processed time.Duration) string {
	var during []string
	for _, ev := range events {
		if ev.at <= processed && ev.at+ev.took >= acked {
			during = append(during, fmt.Sprintf("%s at %s (%s)", ev.fault, ev.at.Round(100*time.Millisecond), ev.detail))
		}
	}
	if len(during) == 0 {
		return "no fault while it waited"
	}
	return "faults while it waited: " + strings.Join(during, "; ")
}

// waitProcessed waits until every acknowledged message has a processed
// row, no row waits for a publish and the gateway's consumer has nothing
// pending or unacknowledged. It returns how long that took.
func (s *soak) waitProcessed(t *testing.T, d *pacedDriver, within time.Duration) (time.Duration, bool) {
	t.Helper()
	start := time.Now()
	want := d.acknowledged()
	for time.Since(start) < within {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		var processed, waiting int
		err := s.db.Pool.QueryRow(ctx, `select count(*) filter (where processing_state = 'processed'),
				count(*) filter (where processing_state in ('pending', 'publish_failed'))
			from device_telemetry_logs`).Scan(&processed, &waiting)
		idle := false
		if err == nil && processed >= want && waiting == 0 {
			if cons, err := s.js.Consumer(ctx, "TELEMETRY", "telemesh-gateway"); err == nil {
				info, err := cons.Info(ctx)
				idle = err == nil && info.NumPending == 0 && info.NumAckPending == 0
			}
		}
		cancel()
		if idle {
			return time.Since(start), true
		}
		time.Sleep(2 * time.Second)
	}
	return time.Since(start), false
}

// pacedDriver publishes n messages at a steady rate, with unique ids in
// the Nats-Msg-Id header and the payload, from many publishers at once as
// a fleet would, and sends a publish NATS did not acknowledge again with
// the same id until it does. It keeps only when each was acknowledged, in
// a slice, so a run of millions fits.
type pacedDriver struct {
	js      jetstream.JetStream
	n, rate int
	// ackedAt holds, per message, when NATS first acknowledged it (Unix
	// nanoseconds; 0 until then).
	ackedAt []atomic.Int64
	acked   atomic.Int64
	retries atomic.Int64
}

func newPacedDriver(js jetstream.JetStream, n, rate int) *pacedDriver {
	return &pacedDriver{js: js, n: n, rate: rate, ackedAt: make([]atomic.Int64, n)}
}

// soakID is the id of the soak's i-th message.
func soakID(i int) string { return fmt.Sprintf("soak-%09d", i) }

// run publishes every message on its schedule and returns once all are
// acknowledged or ctx ends. A publish held up (NATS failing over) delays
// the ones behind it, which then go as fast as NATS takes them, as
// devices' buffers drain.
func (d *pacedDriver) run(ctx context.Context) error {
	const publishers = 64
	work := make(chan int, publishers)
	errs := make(chan error, publishers)
	var wg sync.WaitGroup
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := d.publish(ctx, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	start := time.Now()
	for i := 0; i < d.n && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * time.Second / time.Duration(d.rate))
		if wait := time.Until(due); wait > time.Millisecond {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return ctx.Err()
}

// publish sends message i until NATS acknowledges it.
func (d *pacedDriver) publish(ctx context.Context, i int) error {
	id := soakID(i)
	dev := devices[i%len(devices)]
	body := []byte(dev.body(id, i))
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := d.js.Publish(pctx, dev.subject, body, jetstream.WithMsgID(id), jetstream.WithExpectStream("TELEMETRY"))
		cancel()
		if err == nil {
			d.ackedAt[i].Store(time.Now().UnixNano())
			d.acked.Add(1)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s not acknowledged: %w (last error: %v)", id, ctx.Err(), err)
		}
		d.retries.Add(1)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// acknowledged returns how many messages NATS has acknowledged.
func (d *pacedDriver) acknowledged() int { return int(d.acked.Load()) }

// ackedSeq yields every acknowledged id with when it was acknowledged.
func (d *pacedDriver) ackedSeq() iter.Seq2[string, time.Time] {
	return func(yield func(string, time.Time) bool) {
		for i := range d.ackedAt {
			if at := d.ackedAt[i].Load(); at != 0 && !yield(soakID(i), time.Unix(0, at)) {
				return
			}
		}
	}
}

func TestSoakSettings(t *testing.T) {
	for _, c := range []struct {
		duration, rate, seed string
		run, err             bool
		want                 soakSettings
	}{
		{duration: "", run: false},
		{duration: "5m", rate: "200", seed: "42", run: true, want: soakSettings{5 * time.Minute, 200, 42}},
		{duration: "30m", run: true, want: soakSettings{duration: 30 * time.Minute, rate: defaultSoakRate}},
		{duration: "soon", err: true},
		{duration: "-1m", err: true},
		{duration: "1m", rate: "0", err: true},
		{duration: "1m", seed: "x", err: true},
	} {
		t.Setenv(EnvSoakDuration, c.duration)
		t.Setenv(EnvSoakRate, c.rate)
		t.Setenv(EnvSoakSeed, c.seed)
		got, run, err := readSoakSettings()
		if (err != nil) != c.err || run != c.run {
			t.Errorf("%q %q %q: run %t, err %v; want run %t, error %t", c.duration, c.rate, c.seed, run, err, c.run, c.err)
			continue
		}
		if c.run && c.seed == "" {
			got.seed = 0 // from the clock
		}
		if c.run && got != c.want {
			t.Errorf("%q %q %q: %+v, want %+v", c.duration, c.rate, c.seed, got, c.want)
		}
	}
}

func TestFaultsWhileWaiting(t *testing.T) {
	events := []nemesisEvent{
		{at: 178 * time.Second, took: 8 * time.Second, fault: "kill-nats-node", detail: "n3"},
		{at: 215 * time.Second, took: 2 * time.Second, fault: "kill-stage", detail: "validator"},
	}
	for _, c := range []struct {
		acked, processed time.Duration
		want             string
	}{
		{178 * time.Second, 238 * time.Second, "faults while it waited: kill-nats-node at 2m58s (n3); kill-stage at 3m35s (validator)"},
		{170 * time.Second, 180 * time.Second, "faults while it waited: kill-nats-node at 2m58s (n3)"},
		{100 * time.Second, 101 * time.Second, "no fault while it waited"},
		{187 * time.Second, 190 * time.Second, "no fault while it waited"},
	} {
		if got := faultsWhileWaiting(events, c.acked, c.processed); got != c.want {
			t.Errorf("acked %s, processed %s: %q, want %q", c.acked, c.processed, got, c.want)
		}
	}
}
