package process_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/telemesh/telemesh/internal/admin"
	"github.com/telemesh/telemesh/internal/grpcx"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/process"
	"github.com/telemesh/telemesh/internal/testutil"
)

// replica is one running process of a stage that counts the calls it
// takes; ready stands in for its dependencies (Postgres reachable, the
// catalog loaded).
type replica struct {
	testgrpc.UnimplementedTestServiceServer
	addr  string
	calls atomic.Int64
	ready atomic.Bool
	stop  context.CancelFunc
	done  chan error
}

func (r *replica) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	r.calls.Add(1)
	return &testgrpc.Empty{}, nil
}

func startReplica(t *testing.T) *replica {
	t.Helper()
	logger := logging.Discard()
	reg := prometheus.NewRegistry()
	srv, err := grpcx.NewServer(grpcx.DefaultServerConfig(), logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{done: make(chan error, 1)}
	r.ready.Store(true)
	testgrpc.RegisterTestServiceServer(srv, r)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adm, err := admin.New("127.0.0.1:0", reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	p := &process.Process{
		Name: "test", Logger: logger, GRPC: srv, Listener: ln, Admin: adm, ShutdownGrace: 10 * time.Second,
		Ready: func(context.Context) error {
			if !r.ready.Load() {
				return fmt.Errorf("postgres: connection refused")
			}
			return nil
		},
		ReadyEvery: 20 * time.Millisecond,
	}
	go func() { r.done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// healthOf asks a replica's health service directly.
func healthOf(t *testing.T, addr string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	// A plain connection: grpcx's would not connect to a replica that
	// says NOT_SERVING, which is what this asks.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN
	}
	return resp.GetStatus()
}

// TestNotServingReplicaGetsNoCalls checks that a replica whose readiness
// fails turns NOT_SERVING and that a client of both replicas then sends
// every call to the other one, losing none; that it takes calls again once
// ready; and that a replica draining before it stops takes no new calls.
func TestNotServingReplicaGetsNoCalls(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	conn, err := grpcx.Dial(a.addr+","+b.addr, grpcx.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := testgrpc.NewTestServiceClient(conn)
	call := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if _, err := client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
			t.Fatalf("call failed: %v", err)
		}
	}
	spread := func(what string, wantA, wantB bool) {
		t.Helper()
		testutil.Eventually(t, time.Minute, what, func() error {
			a.calls.Store(0)
			b.calls.Store(0)
			for range 20 {
				call()
			}
			if gotA, gotB := a.calls.Load() > 0, b.calls.Load() > 0; gotA != wantA || gotB != wantB {
				return fmt.Errorf("replica a took %d, b took %d", a.calls.Load(), b.calls.Load())
			}
			return nil
		})
	}
	spread("both replicas take calls", true, true)

	a.ready.Store(false)
	testutil.Eventually(t, time.Minute, "replica a NOT_SERVING", func() error {
		if st := healthOf(t, a.addr); st != healthpb.HealthCheckResponse_NOT_SERVING {
			return fmt.Errorf("health %v", st)
		}
		return nil
	})
	spread("only replica b takes calls", false, true)
	// Once the client has seen it, not one call reaches a, and none fails.
	a.calls.Store(0)
	b.calls.Store(0)
	for range 200 {
		call()
	}
	if a.calls.Load() != 0 || b.calls.Load() != 200 {
		t.Fatalf("with a NOT_SERVING: a took %d, b took %d of 200", a.calls.Load(), b.calls.Load())
	}

	a.ready.Store(true)
	spread("replica a takes calls again once ready", true, true)

	// b drains: NOT_SERVING first, then it stops; every call still succeeds.
	b.stop()
	for range 200 {
		call()
	}
	<-b.done
	b.done <- nil // for the cleanup
	if st := healthOf(t, b.addr); st == healthpb.HealthCheckResponse_SERVING {
		t.Errorf("stopped replica b still SERVING")
	}
	spread("only replica a takes calls after b stopped", true, false)
}
