package grpcx_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/telemesh/telemesh/internal/grpcx"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/testcerts"
	"github.com/telemesh/telemesh/internal/testutil"
	"github.com/telemesh/telemesh/internal/tlsx"
)

// serve starts a telemesh server with cfg on loopback and returns its
// address.
func serve(t *testing.T, cfg grpcx.ServerConfig) (*grpcx.Server, string) {
	t.Helper()
	srv, err := grpcx.NewServer(cfg, logging.Discard(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv.Ready()
	srv.SetServing(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(time.Second) })
	return srv, ln.Addr().String()
}

// dialServer connects to one server as a probe or grpcurl does: no
// balancing and no client-side health checking, so what the server
// answers (NOT_SERVING, PermissionDenied on its health service) reaches
// the test instead of keeping the connection from being used.
func dialServer(t *testing.T, target string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func dial(t *testing.T, target string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpcx.Dial(target, grpcx.ClientConfig{Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// listServices asks what `grpcurl list` asks; an error means reflection is
// not served.
func listServices(ctx context.Context, conn *grpc.ClientConn) ([]string, error) {
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		// The stream ended; its status comes with Recv.
		_, err = stream.Recv()
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names, nil
}

func TestReflectionSwitch(t *testing.T) {
	for _, on := range []bool{true, false} {
		cfg := grpcx.DefaultServerConfig()
		cfg.Reflection = on
		_, addr := serve(t, cfg)
		conn := dial(t, addr, nil)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		names, err := listServices(ctx, conn)
		cancel()
		if on {
			if err != nil || !slices.Contains(names, "grpc.reflection.v1.ServerReflection") || !slices.Contains(names, "grpc.health.v1.Health") {
				t.Errorf("reflection on: services %v, %v", names, err)
			}
			continue
		}
		if status.Code(err) != codes.Unimplemented {
			t.Errorf("reflection off: services %v, err %v; want Unimplemented", names, err)
		}
	}
}

func TestHealthServerServesOnlyHealthInStep(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	f := testcerts.Write(t, t.TempDir(), ca.Issue(t, "deriver"), ca)
	r, err := tlsx.New(tlsx.Files{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cfg := grpcx.DefaultServerConfig()
	cfg.Credentials = r.ServerCredentials()
	srv, addr := serve(t, cfg)

	hs := srv.NewHealthServer()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(hs.Stop)

	// Generous: what must fail fails at once, and what must answer must
	// not time out on a busy machine.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	plain := dialServer(t, ln.Addr().String(), insecure.NewCredentials())
	healthOf := func(conn *grpc.ClientConn) (healthpb.HealthCheckResponse_ServingStatus, error) {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return resp.GetStatus(), err
	}
	if st, err := healthOf(plain); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("plaintext health port: %v, %v", st, err)
	}
	if _, err := listServices(ctx, plain); status.Code(err) != codes.Unimplemented {
		t.Errorf("the health port serves reflection: %v", err)
	}
	srv.SetServing(false)
	if st, err := healthOf(plain); err != nil || st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health port after SetServing(false): %v, %v", st, err)
	}
	srv.SetServing(true)

	// The main port refuses plaintext and accepts a client certificate.
	plainMain := dialServer(t, addr, insecure.NewCredentials())
	shortCtx, shortCancel := context.WithTimeout(ctx, time.Second)
	defer shortCancel()
	if _, err := healthpb.NewHealthClient(plainMain).Check(shortCtx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Error("the main port answered a plaintext call")
	}
	if st, err := healthOf(dialServer(t, addr, r.ClientCredentials(""))); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("main port over mTLS: %v, %v", st, err)
	}
}

func TestDialListVerifiesEachReplicaByItsHost(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	var addrs []string
	for _, host := range []string{"127.0.0.1", "localhost"} {
		f := testcerts.Write(t, t.TempDir(), ca.Issue(t, "replica", host), ca)
		r, err := tlsx.New(tlsx.Files{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}, 0, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		cfg := grpcx.DefaultServerConfig()
		cfg.Credentials = r.ServerCredentials()
		_, addr := serve(t, cfg)
		_, port, _ := net.SplitHostPort(addr)
		addrs = append(addrs, net.JoinHostPort(host, port))
	}
	f := testcerts.Write(t, t.TempDir(), ca.Issue(t, "client"), ca)
	cli, err := tlsx.New(tlsx.Files{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	conn := dial(t, addrs[0]+","+addrs[1], cli.ClientCredentials(""))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// round_robin sends only to replicas whose connection is ready; on a
	// busy machine the second handshake can take a while, so call until
	// both have answered. A replica whose certificate did not verify
	// never would.
	seen := map[string]bool{}
	testutil.Eventually(t, time.Minute, "calls reach both replicas", func() error {
		var p peer.Peer
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
			t.Fatalf("call over the list: %v", err)
		}
		seen[p.Addr.String()] = true
		if len(seen) != 2 {
			return fmt.Errorf("calls reached %v", seen)
		}
		return nil
	})
}
