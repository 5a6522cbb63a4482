package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	"github.com/telemesh/telemesh/internal/roles"
	"github.com/telemesh/telemesh/internal/testcerts"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
	"github.com/telemesh/telemesh/internal/tlsx"
)

// lockedBuffer collects a process's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// captured is a telemesh process whose stdout and stderr are both kept.
type captured struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	done           chan error
}

func startCaptured(t *testing.T, env []string, args ...string) *captured {
	t.Helper()
	c := &captured{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan error, 1)}
	c.cmd = exec.Command(telemeshBin, args...)
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stdout, c.cmd.Stderr = c.stdout, c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// exited closes once Wait has returned; the cleanup never reads
	// cmd.ProcessState, which Wait sets, while Wait may still run.
	exited := make(chan struct{})
	go func() {
		err := c.cmd.Wait()
		close(exited)
		c.done <- err
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = c.cmd.Process.Kill()
			<-exited
		}
	})
	return c
}

// waitLog waits for a JSON log line with message msg and returns it.
func (c *captured) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	var found map[string]any
	testutil.Eventually(t, testWait, fmt.Sprintf("a %q log line", msg), func() error {
		for _, line := range strings.Split(c.stderr.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				found = rec
				return nil
			}
		}
		select {
		case err := <-c.done:
			c.done <- err
			t.Fatalf("exited (%v) before logging %q:\n%s", err, msg, c.stderr)
		default:
		}
		return fmt.Errorf("not logged yet:\n%s", c.stderr)
	})
	return found
}

// stop sends SIGTERM and waits for the exit.
func (c *captured) stop(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, c.stderr)
		}
	case <-time.After(testWait):
		t.Fatalf("still running %s after SIGTERM:\n%s", testWait, c.stderr)
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func TestServeOverMTLSWithHealthPortAndNoReflection(t *testing.T) {
	db := testdb.New(t)
	ns := testnats.New(t)
	ca := testcerts.NewCA(t, "telemesh test CA")
	srv := testcerts.Write(t, t.TempDir(), ca.Identity(t, "deriver"), ca)
	cli := testcerts.Write(t, t.TempDir(), ca.Identity(t, "operator"), ca)

	p := startCaptured(t, []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_TLS_CERT_FILE=" + srv.Cert},
		"serve", "deriver", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
		"--tls-key-file", srv.Key, "--tls-ca-file", srv.CA, "--reflection=false", "--log-format", "json", "--shutdown-grace", "5s")
	rec := p.waitLog(t, "serving")
	grpcAddr, _ := rec["grpc"].(string)
	healthAddr, _ := rec["health"].(string)
	if healthAddr == "" {
		t.Fatalf("no health address in %v", rec)
	}
	if loaded := p.waitLog(t, "TLS certificate loaded"); loaded["cert_file"] != srv.Cert {
		t.Errorf("loaded %v", loaded)
	}

	ctx, cancel := context.WithTimeout(t.Context(), testWait)
	defer cancel()
	certs, err := tlsx.New(tlsx.Files{CertFile: cli.Cert, KeyFile: cli.Key, CAFile: cli.CA}, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	mtls, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(certs.ClientCredentials("")))
	if err != nil {
		t.Fatal(err)
	}
	defer mtls.Close()
	testutil.Eventually(t, testWait, "health over mTLS SERVING", func() error {
		if hc, err := healthpb.NewHealthClient(mtls).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("health over mTLS = %v, %v", hc.GetStatus(), err)
		}
		return nil
	})
	// The deriver is the validator's to call: the operator's certificate,
	// or one of the CA with only a common name, is refused, saying whom and
	// what.
	_, err = deriverv1.NewDeriverServiceClient(mtls).Derive(ctx, &deriverv1.DeriveRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied ||
		st.Message() != `caller "operator" may not call /telemesh.deriver.v1.DeriverService/Derive: only validator may` {
		t.Errorf("the operator calling Derive: %v; want PermissionDenied naming it and the method", err)
	}
	t.Logf("operator -> Derive: %v", err)
	named := testcerts.Write(t, t.TempDir(), ca.Issue(t, "operator"), ca)
	namedCerts, err := tlsx.New(tlsx.Files{CertFile: named.Cert, KeyFile: named.Key, CAFile: named.CA}, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	namedConn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(namedCerts.ClientCredentials("")))
	if err != nil {
		t.Fatal(err)
	}
	defer namedConn.Close()
	_, err = deriverv1.NewDeriverServiceClient(namedConn).Derive(ctx, &deriverv1.DeriveRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "no telemesh identity") {
		t.Errorf("CN=operator without an identity calling Derive: %v; want PermissionDenied", err)
	}
	t.Logf("CN=operator (no SAN) -> Derive: %v", err)

	// --reflection=false: what `grpcurl list` asks is not answered.
	if err := listServicesErr(ctx, mtls); status.Code(err) != codes.Unimplemented {
		t.Errorf("reflection with --reflection=false: %v, want Unimplemented", err)
	}

	plain, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	short, shortCancel := context.WithTimeout(ctx, time.Second)
	defer shortCancel()
	if _, err := healthpb.NewHealthClient(plain).Check(short, &healthpb.HealthCheckRequest{}); err == nil {
		t.Error("the mTLS port answered a plaintext call")
	}

	// What the kubelet's gRPC probe asks, in plaintext, on the health port.
	probe, err := grpc.NewClient(healthAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	if hc, err := healthpb.NewHealthClient(probe).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("plaintext health port = %v, %v", hc.GetStatus(), err)
	}
	if _, err := healthpb.NewHealthClient(probe).Check(ctx, &healthpb.HealthCheckRequest{Service: "telemesh.deriver.v1.DeriverService"}); err != nil {
		t.Errorf("the health port does not know the deriver service: %v", err)
	}

	// status reaches the stage with the same flags, and not without them.
	stageStatus := func(extra ...string) string {
		t.Helper()
		args := append([]string{"status", "--json", "--timeout", "2s", "--deriver-addr", grpcAddr}, extra...)
		cmd := exec.CommandContext(t.Context(), telemeshBin, args...)
		cmd.Env = append(os.Environ(), "TELEMESH_DATABASE_URL="+db.URL, "TELEMESH_NATS_URL="+ns.URL())
		out, err := cmd.Output()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		var rep struct {
			Stages []struct{ Stage, Status string }
		}
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("status output: %v\n%s", err, out)
		}
		for _, s := range rep.Stages {
			if s.Stage == "deriver" {
				return s.Status
			}
		}
		t.Fatalf("no deriver in %s", out)
		return ""
	}
	if st := stageStatus("--tls-cert-file", cli.Cert, "--tls-key-file", cli.Key, "--tls-ca-file", cli.CA); st != "SERVING" {
		t.Errorf("status with the --tls-* flags: deriver %s, want SERVING", st)
	}
	if st := stageStatus(); st == "SERVING" {
		t.Error("status without TLS reached the mTLS stage")
	}
	p.stop(t)
}

func listServicesErr(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		// The stream ended; its status comes with Recv.
		_, err = stream.Recv()
		return err
	}
	_, err = stream.Recv()
	return err
}

func TestBadTLSSettingsExit2(t *testing.T) {
	db := testdb.New(t)
	ca := testcerts.NewCA(t, "telemesh test CA")
	f := testcerts.Write(t, t.TempDir(), ca.Issue(t, "deriver"), ca)
	other := testcerts.Write(t, t.TempDir(), ca.Identity(t, "deriver"), ca)
	tests := []struct {
		name     string
		args     []string
		wantLine string
	}{
		{"a certificate without its key", []string{"serve", "deriver", "--tls-cert-file", f.Cert, "--tls-ca-file", f.CA},
			"invalid setting --tls-cert-file (TELEMESH_TLS_CERT_FILE): the certificate, its key and the CA bundle go together"},
		{"a key for another certificate", []string{"serve", "validator", "--tls-cert-file", f.Cert, "--tls-key-file", f.CA, "--tls-ca-file", f.CA},
			"invalid setting --tls-cert-file (TELEMESH_TLS_CERT_FILE): unusable certificate and key"},
		{"a CA bundle that is not PEM", []string{"serve", "persister", "--tls-cert-file", f.Cert, "--tls-key-file", f.Key, "--tls-ca-file", f.Key},
			"invalid setting --tls-ca-file (TELEMESH_TLS_CA_FILE): unusable CA bundle"},
		{"a server name without TLS", []string{"serve", "publisher", "--tls-server-name", "telemesh"},
			"invalid setting --tls-server-name (TELEMESH_TLS_SERVER_NAME)"},
		{"a bad health port", []string{"serve", "deriver", "--health-listen", ":99999"},
			"invalid setting --health-listen (TELEMESH_HEALTH_LISTEN)"},
		{"status with half the TLS flags", []string{"status", "--tls-ca-file", f.CA},
			"invalid setting --tls-cert-file (TELEMESH_TLS_CERT_FILE)"},
		{"a certificate of another stage", []string{"serve", "validator", "--tls-cert-file", other.Cert, "--tls-key-file", other.Key, "--tls-ca-file", other.CA},
			`invalid setting --tls-cert-file (TELEMESH_TLS_CERT_FILE): certificate "CN=deriver" carries the identity deriver, not validator`},
		{"a trust domain that is none", []string{"serve", "deriver", "--tls-trust-domain", "Telemesh/prod"},
			"invalid setting --tls-trust-domain (TELEMESH_TLS_TRUST_DOMAIN)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, code := runTelemesh(t, []string{"TELEMESH_DATABASE_URL=" + db.URL}, tt.args...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], tt.wantLine) {
				t.Fatalf("exit %d, output %q; want exit 2 and one line containing %q", code, out, tt.wantLine)
			}
		})
	}
}

// The secrets of TestNoSecretInLogsOrPrintedConfig: each is distinctive, so
// any appearance is a leak.
const (
	dbPassword     = "pg-pw-8f3a1c"
	natsURLPass    = "nats-url-pw-51d0e7"
	natsPassword   = "nats-pw-c92b44"
	natsToken      = "nats-token-7e61aa"
	viewerToken    = "viewer-token-3b9d02"
	natsServerPass = "nats-server-pw-0a4f19"
)

func TestNoSecretInLogsOrPrintedConfig(t *testing.T) {
	secrets := []string{dbPassword, natsURLPass, natsPassword, natsToken, viewerToken, natsServerPass}
	checkClean := func(t *testing.T, what, out string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("%s shows the secret %q:\n%s", what, s, out)
			}
		}
	}

	t.Run("nothing reachable", func(t *testing.T) {
		// Postgres and NATS are both down: the gateway logs its
		// configuration, then its failed connection attempts.
		env := []string{
			"TELEMESH_DATABASE_URL=postgres://telemesh:" + dbPassword + "@" + closedPort(t) + "/telemesh?sslmode=disable",
			"TELEMESH_NATS_URL=nats://gateway:" + natsURLPass + "@" + closedPort(t),
			"TELEMESH_NATS_USER=gateway",
			"TELEMESH_NATS_PASSWORD=" + natsPassword,
			"TELEMESH_NATS_TOKEN=" + natsToken,
			"TELEMESH_VIEWER_TOKEN=" + viewerToken,
		}
		p := startCaptured(t, env, "serve", "gateway", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--log-format", "json", "--log-level", "debug", "--shutdown-grace", "2s")
		cfg := p.waitLog(t, "configuration")
		p.waitLog(t, "serving")
		p.waitLog(t, "catalog not loaded yet; retrying")
		p.waitLog(t, "nats not reachable yet; retrying in the background")
		p.stop(t)
		checkClean(t, "stdout", p.stdout.String())
		checkClean(t, "stderr", p.stderr.String())
		if cfg["nats-password"] != "*****" || cfg["nats-token"] != "*****" ||
			!strings.Contains(cfg["database-url"].(string), "xxxxx") || !strings.Contains(cfg["nats-url"].(string), "xxxxx") {
			t.Errorf("configuration printed as %v", cfg)
		}
	})

	t.Run("NATS refuses the password", func(t *testing.T) {
		db := testdb.New(t)
		ns := testnats.NewWith(t, func(o *server.Options) { o.Username, o.Password = "gateway", natsServerPass })
		env := []string{
			"TELEMESH_DATABASE_URL=" + strings.Replace(db.URL, "postgres@", "postgres:"+dbPassword+"@", 1),
			"TELEMESH_NATS_URL=" + ns.URL(),
			"TELEMESH_NATS_USER=gateway",
			"TELEMESH_NATS_PASSWORD=" + natsPassword,
		}
		p := startCaptured(t, env, "serve", "gateway", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json")
		select {
		case err := <-p.done:
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("exit %v, want 2:\n%s", err, p.stderr)
			}
		case <-time.After(testWait):
			t.Fatalf("still running with a refused password:\n%s", p.stderr)
		}
		last := strings.TrimSpace(p.stderr.String())
		last = last[strings.LastIndex(last, "\n")+1:]
		want := "telemesh: invalid setting --nats-password (TELEMESH_NATS_PASSWORD): connect nats: credentials refused: nats: Authorization Violation"
		if last != want {
			t.Errorf("last line %q, want %q", last, want)
		}
		checkClean(t, "stdout", p.stdout.String())
		checkClean(t, "stderr", p.stderr.String())
	})

	t.Run("NATS takes the password", func(t *testing.T) {
		db := testdb.New(t)
		ns := testnats.NewWith(t, func(o *server.Options) { o.Username, o.Password = "gateway", natsServerPass })
		env := []string{
			"TELEMESH_DATABASE_URL=" + db.URL,
			"TELEMESH_NATS_URL=" + ns.URL(),
			"TELEMESH_NATS_USER=gateway",
			"TELEMESH_NATS_PASSWORD=" + natsServerPass,
		}
		p := startCaptured(t, env, "serve", "gateway", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--log-format", "json", "--log-level", "debug", "--shutdown-grace", "2s")
		p.waitLog(t, "serving")
		nc, err := nats.Connect(ns.URL(), nats.UserInfo("gateway", natsServerPass))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		testutil.Eventually(t, testWait, "the gateway makes its stream", func() error {
			if _, err := js.Stream(t.Context(), "TELEMETRY"); err != nil {
				return fmt.Errorf("%w:\n%s", err, p.stderr)
			}
			return nil
		})
		p.stop(t)
		checkClean(t, "stdout", p.stdout.String())
		checkClean(t, "stderr", p.stderr.String())
	})
}

func TestRolesCommand(t *testing.T) {
	db := testdb.New(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	o := roles.Options{Prefix: "tmc" + hex.EncodeToString(b) + "_"}
	t.Cleanup(func() {
		if err := roles.Drop(context.Background(), db.Pool, o); err != nil {
			t.Errorf("drop roles: %v", err)
		}
	})
	env := []string{"TELEMESH_DATABASE_URL=" + db.URL, "TELEMESH_ROLE_PREFIX=" + o.Prefix, "TELEMESH_GATEWAY_PASSWORD=" + natsPassword}

	out, code := runTelemesh(t, env, "roles", "apply", "--dry-run")
	if code != 0 || !strings.Contains(out, "would change") {
		t.Fatalf("dry run: exit %d\n%s", code, out)
	}
	out, code = runTelemesh(t, env, "roles", "apply")
	if code != 0 || !strings.Contains(out, o.RoleName("gateway")+": created, with a password") ||
		!strings.Contains(out, o.RoleName("validator")+": granted SELECT on ingestion_messages") {
		t.Fatalf("apply: exit %d\n%s", code, out)
	}
	if strings.Contains(out, natsPassword) {
		t.Fatalf("apply printed the password:\n%s", out)
	}
	out, code = runTelemesh(t, env[:2], "roles", "apply")
	if code != 0 || !strings.Contains(out, "already as specified") {
		t.Fatalf("second apply: exit %d\n%s", code, out)
	}
	out, code = runTelemesh(t, env[1:2], "roles", "list")
	if code != 0 || !strings.Contains(out, o.RoleName("persister")) || !strings.Contains(out, "device_telemetry_logs") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	// Unmigrated: a clear error, not a half-applied set of roles.
	empty := testdb.NewEmpty(t)
	out, code = runTelemesh(t, []string{"TELEMESH_DATABASE_URL=" + empty.URL, "TELEMESH_ROLE_PREFIX=" + o.Prefix}, "roles", "apply")
	if code != 1 || !strings.Contains(out, "run telemesh migrate up first") {
		t.Fatalf("apply on an unmigrated database: exit %d\n%s", code, out)
	}
}
