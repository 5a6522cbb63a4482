package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
)

// chain stands in for the validator and everything after it: it records
// every message id it is given and answers each completed, after hold
// returns for the call.
type chain struct {
	validatorv1.UnimplementedValidatorServiceServer
	hold func(ctx context.Context, ids []string)

	mu    sync.Mutex
	calls map[string]int
}

func (c *chain) Validate(ctx context.Context, req *validatorv1.ValidateRequest) (*validatorv1.ValidateResponse, error) {
	ids := make([]string, len(req.GetEnvelopes()))
	for i, e := range req.GetEnvelopes() {
		ids[i] = e.GetSourceMessageId()
	}
	c.mu.Lock()
	for _, id := range ids {
		c.calls[id]++
	}
	c.mu.Unlock()
	if c.hold != nil {
		c.hold(ctx, ids)
	}
	out := make([]*telemetryv1.Outcome, len(req.GetEnvelopes()))
	for i, e := range req.GetEnvelopes() {
		out[i] = &telemetryv1.Outcome{MessageId: e.GetMessageId(), DedupeKey: e.GetDedupeKey(), Status: telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED}
	}
	return &validatorv1.ValidateResponse{Outcomes: out}, nil
}

// seen returns how many times the chain was given each message id.
func (c *chain) seen() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.calls))
	for k, v := range c.calls {
		out[k] = v
	}
	return out
}

// fixture is what a gateway needs: a database with the demo fleet, an
// in-process NATS server and a chain on loopback gRPC.
type fixture struct {
	t     *testing.T
	db    *testdb.DB
	nats  *testnats.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	chain *chain
	deps  func(cfg Config) *Server

	mu sync.Mutex
	// slow counts the messages the client dropped as a slow consumer.
	slow int
}

func newFixture(t *testing.T, hold func(ctx context.Context, ids []string)) *fixture {
	t.Helper()
	c := &chain{hold: hold, calls: map[string]int{}}
	f := newFixtureWith(t, func(*testdb.DB) validatorv1.ValidatorServiceServer { return c })
	f.chain = c
	return f
}

// newFixtureWith is a fixture whose chain is the validator server that
// newChain makes on the fixture's database.
func newFixtureWith(t *testing.T, newChain func(*testdb.DB) validatorv1.ValidatorServiceServer) *fixture {
	t.Helper()
	db := testdb.New(t)
	if err := demo.Seed(t.Context(), db.Pool); err != nil {
		t.Fatalf("seed the demo fleet: %v", err)
	}
	logger := slog.New(slog.DiscardHandler)
	cat := catalog.NewCache(db.Pool, logger, time.Minute)
	if err := cat.Load(t.Context()); err != nil {
		t.Fatalf("load the catalog: %v", err)
	}
	logs, err := stagelog.New(stagelog.ModeAll, 1, "test-gateway")
	if err != nil {
		t.Fatal(err)
	}
	ns := testnats.New(t)
	f := &fixture{t: t, db: db, nats: ns}
	nc, err := nats.Connect(ns.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				f.mu.Lock()
				f.slow++
				f.mu.Unlock()
			}
		}))
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	f.nc, f.js = nc, js

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	validatorv1.RegisterValidatorServiceServer(srv, newChain(db))
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	f.deps = func(cfg Config) *Server {
		return New(cfg, js, validatorv1.NewValidatorServiceClient(conn), cat, db.Pool, logs, NewMetrics(prometheus.NewRegistry()), logger)
	}
	return f
}

// slowConsumerDrops returns how many times the client reported dropping
// messages as a slow consumer.
func (f *fixture) slowConsumerDrops() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slow
}

// config is the gateway's default configuration on the demo subjects.
func (f *fixture) config() Config {
	cfg := DefaultConfig()
	cfg.Subjects = demo.Subjects
	return cfg
}

// start sets up and runs a gateway until the returned stop is called; stop
// returns once Run has.
func (f *fixture) start(cfg Config) (stop func()) {
	f.t.Helper()
	g := f.deps(cfg)
	if err := g.Setup(f.t.Context()); err != nil {
		f.t.Fatalf("setup: %v", err)
	}
	ctx, cancel := context.WithCancel(f.t.Context())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					f.t.Errorf("run: %v", err)
				}
			case <-time.After(time.Minute):
				f.t.Errorf("the gateway did not stop within a minute")
			}
		})
	}
	f.t.Cleanup(stop)
	return stop
}

// publish sends n messages with ids prefix-0 .. prefix-(n-1).
func (f *fixture) publish(prefix string, n int) []string {
	f.t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		if _, err := f.js.Publish(f.t.Context(), "devices.thermo-01.telemetry", []byte(`{"temp_c": 21.5}`), jetstream.WithMsgID(ids[i])); err != nil {
			f.t.Fatalf("publish: %v", err)
		}
	}
	return ids
}

// consumer returns the gateway consumer's state.
func (f *fixture) consumer(cfg Config) *jetstream.ConsumerInfo {
	f.t.Helper()
	c, err := f.js.Consumer(f.t.Context(), cfg.Stream, cfg.Consumer)
	if err != nil {
		f.t.Fatalf("consumer: %v", err)
	}
	info, err := c.Info(f.t.Context())
	if err != nil {
		f.t.Fatalf("consumer info: %v", err)
	}
	return info
}

// TestSlowBatchIsNotRedelivered: a batch that takes several ack waits to
// come back down the chain is kept alive with progress signals, so
// JetStream does not hand its messages out again while it is in flight.
func TestSlowBatchIsNotRedelivered(t *testing.T) {
	const slow = 3500 * time.Millisecond
	f := newFixture(t, func(ctx context.Context, ids []string) {
		select {
		case <-time.After(slow):
		case <-ctx.Done():
		}
	})
	cfg := f.config()
	cfg.AckWait = time.Second
	cfg.Concurrency = 4
	f.start(cfg)
	ids := f.publish("slow", 3)

	testutil.Eventually(t, 30*time.Second, "every message acknowledged", func() error {
		if info := f.consumer(cfg); info.NumAckPending != 0 || info.NumPending != 0 {
			return fmt.Errorf("%d awaiting an ack, %d not delivered", info.NumAckPending, info.NumPending)
		}
		return nil
	})
	seen := f.chain.seen()
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("message %s went down the chain %d times, want once: its batch took %s, %.1f ack waits", id, seen[id], slow, float64(slow)/float64(cfg.AckWait))
		}
	}
	if n := f.consumer(cfg).NumRedelivered; n != 0 {
		t.Errorf("%d messages redelivered while their batch was in flight", n)
	}
}

// TestWaitingBatchIsNotRedelivered: with one worker busy on a slow batch,
// the gateway pulls the next batch ahead (MaxAckPending left to its
// default covers it), and that batch, waiting longer than the ack wait for
// the worker, is kept alive too: every message goes down the chain once.
func TestWaitingBatchIsNotRedelivered(t *testing.T) {
	const slow = 2500 * time.Millisecond
	f := newFixture(t, func(ctx context.Context, ids []string) {
		select {
		case <-time.After(slow):
		case <-ctx.Done():
		}
	})
	cfg := f.config()
	cfg.AckWait = time.Second
	cfg.Concurrency, cfg.BatchSize, cfg.MaxAckPending = 1, 2, 0
	f.start(cfg)
	ids := f.publish("waiting", 4)

	// Both batches pulled while the first is in flight: the second waits.
	testutil.Eventually(t, 30*time.Second, "the next batch pulled ahead", func() error {
		if info := f.consumer(cfg); info.NumAckPending != len(ids) {
			return fmt.Errorf("%d of %d delivered and unacknowledged", info.NumAckPending, len(ids))
		}
		return nil
	})
	testutil.Eventually(t, 30*time.Second, "every message acknowledged", func() error {
		if info := f.consumer(cfg); info.NumAckPending != 0 || info.NumPending != 0 {
			return fmt.Errorf("%d awaiting an ack, %d not delivered", info.NumAckPending, info.NumPending)
		}
		return nil
	})
	seen := f.chain.seen()
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("message %s went down the chain %d times, want once", id, seen[id])
		}
	}
	if n := f.consumer(cfg).NumRedelivered; n != 0 {
		t.Errorf("%d messages redelivered while their batch waited for the worker", n)
	}
}

// TestStopHandsBackUnstartedMessages: a gateway stopping gracefully
// finishes the batch it has in flight and NAKs what it pulled but did not
// start, so another gateway takes those at once instead of after the ack
// wait.
func TestStopHandsBackUnstartedMessages(t *testing.T) {
	release := make(chan struct{})
	inFlight := make(chan []string, 1)
	var holdFirst sync.Once
	f := newFixture(t, func(ctx context.Context, ids []string) {
		held := false
		holdFirst.Do(func() { held = true })
		if held {
			inFlight <- ids
			<-release
		}
	})
	cfg := f.config()
	// An ack wait far longer than the test's deadlines: only a NAK can
	// bring the pulled messages back in time.
	cfg.AckWait = 2 * time.Minute
	cfg.Concurrency, cfg.BatchSize = 1, 1
	cfg.MaxAckPending = 50
	stopFirst := f.start(cfg)
	ids := f.publish("stop", 6)

	var held []string
	select {
	case held = <-inFlight:
	case <-time.After(30 * time.Second):
		t.Fatal("the first batch never reached the chain")
	}
	// The first gateway holds them all: one in flight, the others pulled.
	testutil.Eventually(t, 30*time.Second, "every message delivered to the first gateway", func() error {
		if info := f.consumer(cfg); info.NumAckPending != len(ids) {
			return fmt.Errorf("%d of %d delivered and unacknowledged", info.NumAckPending, len(ids))
		}
		return nil
	})

	stopped := make(chan struct{})
	go func() { stopFirst(); close(stopped) }()
	start := time.Now()
	f.start(cfg)
	// The second gateway takes every message but the one in flight, while
	// the first is still finishing it.
	testutil.Eventually(t, 30*time.Second, "the unstarted messages taken by the second gateway", func() error {
		seen := f.chain.seen()
		for _, id := range ids {
			if id != held[0] && seen[id] == 0 {
				return fmt.Errorf("message %s not taken yet", id)
			}
		}
		return nil
	})
	if took := time.Since(start); took >= cfg.AckWait {
		t.Errorf("the second gateway took %s, an ack wait: the messages were not handed back", took)
	}
	select {
	case <-stopped:
		t.Fatal("the first gateway stopped before the batch it had in flight was finished")
	default:
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatal("the first gateway did not stop once its batch in flight was finished")
	}
	testutil.Eventually(t, 30*time.Second, "every message acknowledged", func() error {
		if info := f.consumer(cfg); info.NumAckPending != 0 || info.NumPending != 0 {
			return fmt.Errorf("%d awaiting an ack, %d not delivered", info.NumAckPending, info.NumPending)
		}
		return nil
	})
	seen := f.chain.seen()
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("message %s went down the chain %d times, want once", id, seen[id])
		}
	}
}

// TestSetupUpdatesAnExistingConsumer: a consumer made by an earlier
// release, with a minute's ack wait, a large MaxAckPending and ten
// deliveries, takes the
// current settings when a gateway starts.
func TestSetupUpdatesAnExistingConsumer(t *testing.T) {
	f := newFixture(t, nil)
	cfg := f.config()
	if _, err := f.js.CreateStream(t.Context(), jetstream.StreamConfig{Name: cfg.Stream, Subjects: cfg.Subjects}); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if _, err := f.js.CreateConsumer(t.Context(), cfg.Stream, jetstream.ConsumerConfig{
		Durable: cfg.Consumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, MaxAckPending: 20000, MaxDeliver: 10,
	}); err != nil {
		t.Fatalf("the earlier consumer: %v", err)
	}
	if err := f.deps(cfg).Setup(t.Context()); err != nil {
		t.Fatalf("setup: %v", err)
	}
	info := f.consumer(cfg)
	if info.Config.AckWait != cfg.AckWait {
		t.Errorf("ack wait %s, want %s", info.Config.AckWait, cfg.AckWait)
	}
	if info.Config.MaxDeliver != cfg.MaxDeliver {
		t.Errorf("max deliver %d, want %d", info.Config.MaxDeliver, cfg.MaxDeliver)
	}
	if want := cfg.BatchSize * (cfg.Concurrency + 1); info.Config.MaxAckPending != want {
		t.Errorf("MaxAckPending %d, want %d (batch size x (batches in flight + the one gathered next))", info.Config.MaxAckPending, want)
	}
}

// TestNoSlowConsumerAfterReconnect: after NATS restarts, the client pulls
// again while what it pulled before is still buffered; the subscription
// holds everything the consumer may deliver, so nothing is dropped as a
// slow consumer (which would leave it waiting an ack wait).
func TestNoSlowConsumerAfterReconnect(t *testing.T) {
	release := make(chan struct{})
	f := newFixture(t, func(ctx context.Context, ids []string) {
		select {
		case <-release:
		case <-ctx.Done():
		}
	})
	cfg := f.config()
	cfg.BatchSize, cfg.Concurrency = 5, 2
	cfg.AckWait = 30 * time.Second
	f.start(cfg)
	ids := f.publish("reconnect", 200)
	testutil.Eventually(t, 30*time.Second, "the gateway holding as much as it may", func() error {
		if info := f.consumer(cfg); info.NumAckPending < cfg.BatchSize*cfg.Concurrency {
			return fmt.Errorf("%d delivered and unacknowledged", info.NumAckPending)
		}
		return nil
	})

	f.nats.Restart(t)
	testutil.Eventually(t, 30*time.Second, "the client reconnected", func() error {
		if !f.nc.IsConnected() {
			return errors.New("not connected")
		}
		return nil
	})
	close(release)
	testutil.Eventually(t, 2*time.Minute, "every message acknowledged", func() error {
		if info := f.consumer(cfg); info.NumAckPending != 0 || info.NumPending != 0 {
			return fmt.Errorf("%d awaiting an ack, %d not delivered", info.NumAckPending, info.NumPending)
		}
		return nil
	})
	if n := f.slowConsumerDrops(); n != 0 {
		t.Errorf("the client dropped messages as a slow consumer %d times", n)
	}
	seen := f.chain.seen()
	for _, id := range ids {
		if seen[id] == 0 {
			t.Errorf("message %s never went down the chain", id)
		}
	}
}
