package grpcx

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// serveHealth serves the health service on addr ("127.0.0.1:0" for any
// port) and returns the address and a stop function.
func serveHealth(t *testing.T, addr string) (string, func()) {
	t.Helper()
	var lis net.Listener
	var err error
	// The port of a stopped server may take a moment to be free again.
	for deadline := time.Now().Add(30 * time.Second); ; {
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), srv.Stop
}

// TestReachesAStageWithinASecondOfItsReturn: a stage down for ten seconds
// (gRPC's default backoff would by then wait several seconds between
// attempts) is reached again within about a second of coming back, and a
// call made while it was down waits for it rather than failing.
func TestReachesAStageWithinASecondOfItsReturn(t *testing.T) {
	addr, stop := serveHealth(t, "127.0.0.1:0")
	conn, err := Dial(addr, ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := healthpb.NewHealthClient(conn)
	if _, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check while up: %v", err)
	}

	stop()
	// The client sees the stage go, then the stage stays down long enough
	// for gRPC's default backoff to have grown past five seconds.
	waitCtx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for st := conn.GetState(); st == connectivity.Ready; st = conn.GetState() {
		if !conn.WaitForStateChange(waitCtx, st) {
			t.Fatal("the client never noticed the stage was gone")
		}
	}
	select {
	case <-time.After(10 * time.Second): // the outage itself, not a wait for a condition
	case <-t.Context().Done():
		t.Fatal(t.Context().Err())
	}

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		done <- err
	}()
	serveHealth(t, addr)
	back := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("check after the return: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the call made while the stage was down never completed")
	}
	// The backoff is capped at a second; the margin is for a busy machine.
	// gRPC's default backoff takes more than five seconds here.
	if took := time.Since(back); took > 4*time.Second {
		t.Errorf("reached %s after the stage was back, want about a second at most", took.Round(100*time.Millisecond))
	}
}
