package bench_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/gateway"
	"github.com/telemesh/telemesh/internal/testdb"
)

// publishWindow bounds the asynchronous publishes awaiting their
// acknowledgement: enough to keep nats-server busy, few enough that the
// client never stalls on its own limit (twice this).
const publishWindow = 2000

// pollEvery is how often a run looks at its progress.
const pollEvery = 200 * time.Millisecond

// rig is the pipeline and what measures it: a database seeded with the
// fleet, nats-server, the mesh in one shape, and the harness's clients.
type rig struct {
	tb    testing.TB
	db    *testdb.DB
	fleet *fleet
	nats  *natsServer
	nc    *nats.Conn
	js    jetstream.JetStream
	mesh  *mesh
	// conn is the harness's one connection during runs; pg leaves its
	// backend out of the Postgres CPU.
	conn *pgx.Conn
	pg   *pgCPU
	// published counts the messages published so far, for unique ids.
	published int
	// sink receives the spans of a traced mesh; nil when tracing is off.
	sink *traceSink
}

// setup makes a fresh database with the fleet, starts nats-server, and
// calls before (if set) before the mesh starts.
func setup(tb testing.TB, before func(*rig)) *rig {
	tb.Helper()
	s := &rig{tb: tb, db: testdb.New(tb)}
	s.fleet = seedFleet(tb, s.db.Pool)
	s.nats = startNATS(tb)
	s.nc, s.js = s.nats.connect(tb, 2*publishWindow)
	s.pg = newPGCPU(tb, s.db.URL)
	s.conn = s.pg.conn
	if before != nil {
		before(s)
	}
	return s
}

// start starts the mesh in shape, tracing off, and waits until it
// consumes: every stage ready and the gateway's stream and durable
// consumer there.
func (s *rig) start(shape, mode string) {
	s.tb.Helper()
	s.startWith(shape, mode, nil)
}

// startTraced is [rig.start] with tracing on: every stage exports its
// spans over OTLP/gRPC to a sink in the harness, sampled as
// [traceSink.tracedEnv] says.
func (s *rig) startTraced(shape, mode string) {
	s.tb.Helper()
	s.sink = startTraceSink(s.tb)
	s.startWith(shape, mode, s.sink.tracedEnv())
}

func (s *rig) startWith(shape, mode string, env []string) {
	s.tb.Helper()
	s.mesh = startMesh(s.tb, shape, s.db.URL, s.nats.url, mode, env)
	cfg := gateway.DefaultConfig()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := s.js.Consumer(ctx, cfg.Stream, cfg.Consumer)
		cancel()
		if err == nil {
			return
		}
		if err := s.mesh.exited(); err != nil {
			s.tb.Fatalf("the mesh stopped before it consumed: %v", err)
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("consumer %s on stream %s not there 2 minutes after the mesh was ready: %v\n%s",
				cfg.Consumer, cfg.Stream, err, s.mesh.logs())
		}
		time.Sleep(pollEvery)
	}
}

// publisher publishes a run's messages asynchronously, with at most
// publishWindow awaiting their acknowledgement, and checks every
// acknowledgement: a message NATS did not store would leave the run
// waiting for it.
type publisher struct {
	js      jetstream.JetStream
	pending []jetstream.PubAckFuture
}

func (p *publisher) publish(ctx context.Context, m message) error {
	if len(p.pending) >= publishWindow {
		if err := p.waitOldest(ctx); err != nil {
			return err
		}
	}
	f, err := p.js.PublishAsync(m.device.subject, m.body)
	if err != nil {
		return fmt.Errorf("publish %s: %w", m.id, err)
	}
	p.pending = append(p.pending, f)
	return nil
}

func (p *publisher) waitOldest(ctx context.Context) error {
	f := p.pending[0]
	p.pending = p.pending[1:]
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return fmt.Errorf("publish to %s: no acknowledgement: %w", f.Msg().Subject, err)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flush waits for every outstanding acknowledgement.
func (p *publisher) flush(ctx context.Context) error {
	for len(p.pending) > 0 {
		if err := p.waitOldest(ctx); err != nil {
			return err
		}
	}
	return nil
}

// publishAll publishes n messages as fast as NATS takes them and returns
// the moment it began. A failure is sent on errs.
func (s *rig) publishAll(ctx context.Context, prefix string, n int, errs chan<- error) {
	p := &publisher{js: s.js}
	for i := range n {
		if err := p.publish(ctx, s.fleet.message(prefix, i)); err != nil {
			errs <- err
			return
		}
	}
	errs <- p.flush(ctx)
}

// publishPaced publishes n messages at rate per second, each at its due
// time (never ahead of it; a late one goes at once), and sends the time it
// took, or a failure, on done.
func (s *rig) publishPaced(ctx context.Context, prefix string, n int, rate float64, done chan<- pacedResult) {
	p := &publisher{js: s.js}
	start := time.Now()
	interval := time.Duration(float64(time.Second) / rate)
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		if err := p.publish(ctx, s.fleet.message(prefix, i)); err != nil {
			done <- pacedResult{err: err}
			return
		}
	}
	took := time.Since(start)
	done <- pacedResult{took: took, err: p.flush(ctx)}
}

type pacedResult struct {
	took time.Duration
	err  error
}

// processed returns how many telemetry rows are processed and the latest
// processed_at.
func (s *rig) processed() (int, time.Time) {
	s.tb.Helper()
	var n int
	var last *time.Time
	if err := s.conn.QueryRow(context.Background(), `select count(*), max(processed_at) from device_telemetry_logs
		where processing_state = 'processed'`).Scan(&n, &last); err != nil {
		s.tb.Fatalf("count processed rows: %v", err)
	}
	if last == nil {
		return n, time.Time{}
	}
	return n, *last
}

// waitDone waits until the publisher has sent its result on published and
// want telemetry rows are processed, sampling Postgres's CPU as it goes,
// and returns when that was seen and the latest processed_at. It fails
// the run with the state of every table when the deadline passes first.
func (s *rig) waitDone(published <-chan error, want int, within time.Duration) (seen, last time.Time) {
	s.tb.Helper()
	cfg := gateway.DefaultConfig()
	deadline := time.Now().Add(within)
	publishing := true
	for {
		if publishing {
			select {
			case err := <-published:
				if err != nil {
					s.tb.Fatalf("publishing: %v", err)
				}
				publishing = false
			default:
			}
		}
		if err := s.mesh.exited(); err != nil {
			s.tb.Fatalf("the mesh stopped during the run: %v", err)
		}
		if err := s.pg.sample(); err != nil {
			s.tb.Fatalf("Postgres CPU: %v", err)
		}
		// The consumer's numbers are cheap to read; the count of rows is
		// read once it has nothing left.
		if !publishing && s.drained(cfg) {
			if n, at := s.processed(); n >= want {
				return time.Now(), at
			}
		}
		if time.Now().After(deadline) {
			n, _ := s.processed()
			s.tb.Fatalf("only %d of %d telemetry rows processed within %s: %s\n%s", n, want, within, s.states(), s.mesh.logs())
		}
		time.Sleep(pollEvery)
	}
}

// drained reports whether the gateway's consumer has nothing pending and
// nothing unacknowledged.
func (s *rig) drained(cfg gateway.Config) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := s.js.Consumer(ctx, cfg.Stream, cfg.Consumer)
	if err != nil {
		return false
	}
	info, err := c.Info(ctx)
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

// states summarises the telemetry rows and messages by state, for a
// failure message.
func (s *rig) states() string {
	var out string
	err := s.conn.QueryRow(context.Background(), `select coalesce(string_agg(x, ', '), 'no rows') from (
		select 'telemetry ' || processing_state || '=' || count(*) || coalesce(' (' || max(failure_reason) || ')', '') x
			from device_telemetry_logs group by processing_state
		union all select 'message ' || status || '=' || count(*) from ingestion_messages group by status) s`).Scan(&out)
	if err != nil {
		return "cannot read the states: " + err.Error()
	}
	return out
}

// deadlineFor is the generous bound of a run of n messages on a busy
// two-core machine: three minutes plus 300 messages a second.
func deadlineFor(n int) time.Duration {
	return 3*time.Minute + time.Duration(n/300)*time.Second
}

// throughput is what one backlog run measured.
type throughput struct {
	shape    string
	messages int
	elapsed  time.Duration
	// cpu is the CPU of each telemesh process ("telemesh" in-process, each
	// stage's name in the production shape).
	cpu                      map[string]time.Duration
	telemesh, nats, postgres time.Duration
	// postgresLocal is false when Postgres's processes could not be read.
	postgresLocal bool
	wal           int64
	// fpi is the full-page images in that WAL, checkpoints how many
	// checkpoints began or ended during the run.
	fpi, checkpoints int64
	// rss is each telemesh process's peak resident set, and nats-server's,
	// in bytes.
	rss map[string]int64
	// sink received the spans of a traced run; nil when tracing was off.
	// Read it once the mesh has stopped: the stages flush what they hold
	// when they stop.
	sink *traceSink
}

func (r *throughput) rate() float64 { return float64(r.messages) / r.elapsed.Seconds() }

func (r *throughput) perMessage(d time.Duration) float64 {
	return float64(d.Microseconds()) / float64(r.messages)
}

// runBacklog publishes n messages as fast as NATS takes them and measures
// the pipeline from the first publish to the last row processed.
func (s *rig) runBacklog(n int) *throughput {
	s.tb.Helper()
	base, _ := s.processed()
	prefix := fmt.Sprintf("t%d", s.published)
	s.published += n

	pids := s.mesh.pids()
	pids["nats-server"] = s.nats.p.pid()
	cpu := startCPU(s.tb, pids)
	s.pg.restart(s.tb)
	mark := markWAL(s.tb, s.conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	published := make(chan error, 1)
	start := time.Now()
	go s.publishAll(ctx, prefix, n, published)
	_, last := s.waitDone(published, base+n, deadlineFor(n))

	r := &throughput{shape: s.mesh.shape, messages: n, elapsed: last.Sub(start), cpu: map[string]time.Duration{}, rss: map[string]int64{}, sink: s.sink}
	end := markWAL(s.tb, s.conn)
	r.wal = walSince(s.tb, s.conn, mark.lsn)
	r.fpi, r.checkpoints = end.fpi-mark.fpi, end.checkpoints-mark.checkpoints
	r.postgres, r.postgresLocal = s.pg.used(s.tb)
	for name, c := range cpu.used(s.tb) {
		if name == "nats-server" {
			r.nats = c
			continue
		}
		r.cpu[name] = c
		r.telemesh += c
	}
	for name, pid := range pids {
		rss, err := peakRSS(pid)
		if err != nil {
			s.tb.Fatalf("peak RSS of %s: %v", name, err)
		}
		r.rss[name] = rss
	}
	return r
}

// latency is what one paced run measured: publish (the JetStream
// timestamp, ingestion_messages.received_at) to processed
// (device_telemetry_logs.processed_at).
type latency struct {
	rate     float64 // asked for
	achieved float64 // the publisher's rate
	messages int
	p50, p99 time.Duration
	max      time.Duration
}

// runPaced publishes at rate for the given time and measures the latency
// of those messages alone.
func (s *rig) runPaced(rate float64, d time.Duration) *latency {
	s.tb.Helper()
	n := max(1, int(rate*d.Seconds()))
	base, _ := s.processed()
	prefix := fmt.Sprintf("p%d", s.published)
	s.published += n
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, published := make(chan pacedResult, 1), make(chan error, 1)
	// Every message of this run is stored by nats-server after this
	// moment, and nothing before it is still in flight.
	from := time.Now()
	go s.publishPaced(ctx, prefix, n, rate, done)
	var took time.Duration
	go func() {
		r := <-done
		took = r.took
		published <- r.err
	}()
	s.waitDone(published, base+n, deadlineFor(n)+d)

	l := &latency{rate: rate, achieved: float64(n) / took.Seconds()}
	var p50, p99, mx float64
	err := s.conn.QueryRow(context.Background(), `select count(*),
			coalesce(percentile_cont(0.5) within group (order by extract(epoch from t.processed_at - m.received_at)), 0),
			coalesce(percentile_cont(0.99) within group (order by extract(epoch from t.processed_at - m.received_at)), 0),
			coalesce(max(extract(epoch from t.processed_at - m.received_at)), 0)
		from ingestion_messages m join device_telemetry_logs t on t.ingestion_message_id = m.id
		where m.received_at >= $1 and t.processing_state = 'processed'`, from).Scan(&l.messages, &p50, &p99, &mx)
	if err != nil {
		s.tb.Fatalf("latency of the paced run: %v", err)
	}
	if l.messages != n {
		s.tb.Fatalf("the paced run published %d messages but %d were processed after it began", n, l.messages)
	}
	l.p50, l.p99, l.max = seconds(p50), seconds(p99), seconds(mx)
	return l
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
