package tlsx_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/telemesh/telemesh/internal/testcerts"
	"github.com/telemesh/telemesh/internal/tlsx"
)

// logRecorder keeps the messages logged through it.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Level.String()+" "+r.Message)
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// side is one end of a connection: its files and its reloader.
type side struct {
	files testcerts.Files
	r     *tlsx.Reloader
	log   *logRecorder
}

func newSide(t *testing.T, p testcerts.Pair, checkEvery time.Duration, cas ...*testcerts.CA) *side {
	t.Helper()
	dir := t.TempDir()
	f := testcerts.Write(t, dir, p, cas...)
	rec := &logRecorder{}
	r, err := tlsx.New(tlsx.Files{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}, checkEvery, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}
	return &side{files: f, r: r, log: rec}
}

// server is a gRPC server with the health service that records the serial
// of every client certificate it sees.
type server struct {
	addr    string
	mu      sync.Mutex
	serials []*big.Int
}

func startServer(t *testing.T, creds credentials.TransportCredentials) *server {
	t.Helper()
	s := &server{}
	gs := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if p, ok := peer.FromContext(ctx); ok {
				if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
					s.mu.Lock()
					s.serials = append(s.serials, ti.State.PeerCertificates[0].SerialNumber)
					s.mu.Unlock()
				}
			}
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	s.addr = ln.Addr().String()
	return s
}

func (s *server) lastClientSerial() *big.Int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.serials) == 0 {
		return nil
	}
	return s.serials[len(s.serials)-1]
}

func (s *server) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.serials)
}

// check makes one health call on a new connection and returns the serial of
// the certificate the server presented.
func check(t *testing.T, addr string, creds credentials.TransportCredentials) (*big.Int, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Generous: a refused handshake fails at once, and an accepted one
	// must not time out on a busy machine.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return nil, err
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		t.Fatalf("no TLS peer: %+v", p.AuthInfo)
	}
	if ti.State.Version != tls.VersionTLS13 {
		t.Errorf("TLS version %x, want 1.3", ti.State.Version)
	}
	return ti.State.PeerCertificates[0].SerialNumber, nil
}

func mustCheck(t *testing.T, addr string, creds credentials.TransportCredentials) *big.Int {
	t.Helper()
	serial, err := check(t, addr, creds)
	if err != nil {
		t.Fatalf("health check over mTLS: %v", err)
	}
	return serial
}

func TestMutualTLSHandshake(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	srvPair, cliPair := ca.Issue(t, "validator"), ca.Issue(t, "gateway")
	srv := newSide(t, srvPair, -1, ca)
	cli := newSide(t, cliPair, -1, ca)
	s := startServer(t, srv.r.ServerCredentials())

	if got := mustCheck(t, s.addr, cli.r.ClientCredentials("")); got.Cmp(srvPair.Serial) != 0 {
		t.Errorf("client saw server serial %x, want %x", got, srvPair.Serial)
	}
	if got := s.lastClientSerial(); got == nil || got.Cmp(cliPair.Serial) != 0 {
		t.Errorf("server saw client serial %x, want %x", got, cliPair.Serial)
	}
	// A server name that the certificate holds, instead of the address.
	mustCheck(t, s.addr, cli.r.ClientCredentials("localhost"))
	if cli.r.Certificate().SerialNumber.Cmp(cliPair.Serial) != 0 {
		t.Errorf("Certificate() = %x, want %x", cli.r.Certificate().SerialNumber, cliPair.Serial)
	}
}

func TestHandshakesThatMustFail(t *testing.T) {
	ca, other := testcerts.NewCA(t, "telemesh test CA"), testcerts.NewCA(t, "another CA")
	srv := newSide(t, ca.Issue(t, "validator"), -1, ca)
	s := startServer(t, srv.r.ServerCredentials())

	good := ca.Issue(t, "gateway")
	goodCert, err := tls.X509KeyPair(good.CertPEM, good.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	foreign := other.Issue(t, "intruder")
	foreignCert, err := tls.X509KeyPair(foreign.CertPEM, foreign.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(other.Cert)

	tests := []struct {
		name  string
		creds credentials.TransportCredentials
	}{
		{"client certificate from another CA", credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{foreignCert}})},
		{"client without a certificate", credentials.NewTLS(&tls.Config{RootCAs: roots})},
		{"plaintext client", insecure.NewCredentials()},
		{"TLS 1.2 client", credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{goodCert}, MaxVersion: tls.VersionTLS12})},
		{"server certificate from a CA the client does not trust", credentials.NewTLS(&tls.Config{RootCAs: otherRoots, Certificates: []tls.Certificate{goodCert}})},
		{"server certificate for another name", newSide(t, good, -1, ca).r.ClientCredentials("persister.telemesh.svc")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := check(t, s.addr, tt.creds); err == nil {
				t.Fatal("the call succeeded")
			}
		})
	}
	if n := s.calls(); n != 0 {
		t.Errorf("the server handled %d calls", n)
	}
	// The same server still accepts a good client.
	mustCheck(t, s.addr, newSide(t, good, -1, ca).r.ClientCredentials(""))
}

func TestRotatedFilesAreUsedWithoutRestart(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	srvPair, cliPair := ca.Issue(t, "validator"), ca.Issue(t, "gateway")
	srv := newSide(t, srvPair, -1, ca)
	cli := newSide(t, cliPair, -1, ca)
	s := startServer(t, srv.r.ServerCredentials())
	creds := cli.r.ClientCredentials("")
	mustCheck(t, s.addr, creds)

	// The server's certificate is renewed: cert-manager writes the new pair
	// into the mounted Secret.
	renewed := ca.Issue(t, "validator")
	testcerts.WriteFile(t, srv.files.Cert, renewed.CertPEM)
	testcerts.WriteFile(t, srv.files.Key, renewed.KeyPEM)
	if got := mustCheck(t, s.addr, creds); got.Cmp(renewed.Serial) != 0 {
		t.Fatalf("after rotation the server presented %x, want the new serial %x", got, renewed.Serial)
	}
	if srv.log.count("TLS certificate reloaded") != 1 {
		t.Errorf("server log: %v", srv.log.msgs)
	}

	// The client's too.
	renewedClient := ca.Issue(t, "gateway")
	testcerts.WriteFile(t, cli.files.Cert, renewedClient.CertPEM)
	testcerts.WriteFile(t, cli.files.Key, renewedClient.KeyPEM)
	mustCheck(t, s.addr, creds)
	if got := s.lastClientSerial(); got.Cmp(renewedClient.Serial) != 0 {
		t.Fatalf("after rotation the client presented %x, want %x", got, renewedClient.Serial)
	}

	// Touching the files without changing them is not a reload.
	future := time.Now().Add(time.Minute)
	for _, p := range []string{srv.files.Cert, srv.files.Key, srv.files.CA} {
		if err := os.Chtimes(p, future, future); err != nil {
			t.Fatal(err)
		}
	}
	mustCheck(t, s.addr, creds)
	if n := srv.log.count("TLS certificate reloaded"); n != 1 {
		t.Errorf("%d reloads logged after a touch, want still 1", n)
	}
}

func TestHalfWrittenFilesKeepTheLastGoodPair(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	srvPair := ca.Issue(t, "validator")
	srv := newSide(t, srvPair, -1, ca)
	cli := newSide(t, ca.Issue(t, "gateway"), -1, ca)
	s := startServer(t, srv.r.ServerCredentials())
	creds := cli.r.ClientCredentials("")

	// A writer that truncates and rewrites in place is caught half-way, and
	// the new certificate does not match the old key yet.
	next := ca.Issue(t, "validator")
	if err := os.WriteFile(srv.files.Cert, next.CertPEM[:len(next.CertPEM)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := mustCheck(t, s.addr, creds); got.Cmp(srvPair.Serial) != 0 {
			t.Fatalf("with a half-written file the server presented %x, want the last good %x", got, srvPair.Serial)
		}
	}
	if err := os.WriteFile(srv.files.Cert, next.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := mustCheck(t, s.addr, creds); got.Cmp(srvPair.Serial) != 0 {
		t.Fatalf("with a certificate and a key that do not match the server presented %x", got)
	}
	if n := srv.log.count("cannot be used"); n != 2 {
		t.Errorf("%d warnings for two bad states, want 2 (one each): %v", n, srv.log.msgs)
	}
	if err := os.WriteFile(srv.files.Key, next.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := mustCheck(t, s.addr, creds); got.Cmp(next.Serial) != 0 {
		t.Fatalf("once both files are written the server presented %x, want %x", got, next.Serial)
	}
}

func TestRotatedCABundleAdmitsNewClients(t *testing.T) {
	ca, next := testcerts.NewCA(t, "telemesh CA 1"), testcerts.NewCA(t, "telemesh CA 2")
	srv := newSide(t, ca.Issue(t, "validator"), -1, ca)
	s := startServer(t, srv.r.ServerCredentials())
	// A client whose certificate comes from the next CA, trusting the old
	// one for the server.
	dir := t.TempDir()
	f := testcerts.Write(t, dir, next.Issue(t, "gateway"), ca)
	cli, err := tlsx.New(tlsx.Files{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}, -1, slog.New(&logRecorder{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := check(t, s.addr, cli.ClientCredentials("")); err == nil {
		t.Fatal("a client from a CA not yet in the bundle was accepted")
	}
	testcerts.WriteFile(t, srv.files.CA, append(append([]byte{}, ca.PEM...), next.PEM...))
	mustCheck(t, s.addr, cli.ClientCredentials(""))
}

func TestFilesAreCheckedAtMostOncePerInterval(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	srvPair := ca.Issue(t, "validator")
	srv := newSide(t, srvPair, time.Hour, ca)
	cli := newSide(t, ca.Issue(t, "gateway"), -1, ca)
	s := startServer(t, srv.r.ServerCredentials())
	renewed := ca.Issue(t, "validator")
	testcerts.WriteFile(t, srv.files.Cert, renewed.CertPEM)
	testcerts.WriteFile(t, srv.files.Key, renewed.KeyPEM)
	if got := mustCheck(t, s.addr, cli.r.ClientCredentials("")); got.Cmp(srvPair.Serial) != 0 {
		t.Fatalf("the files were read again within the interval: serial %x", got)
	}
}

func TestFilesCheck(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	dir := t.TempDir()
	good := testcerts.Write(t, dir, ca.Issue(t, "validator"), ca)
	other := ca.Issue(t, "other")
	otherKey := filepath.Join(dir, "other.key")
	testcerts.WriteFile(t, otherKey, other.KeyPEM)
	empty := filepath.Join(dir, "empty.crt")
	testcerts.WriteFile(t, empty, nil)

	tests := []struct {
		name  string
		files tlsx.Files
		want  error
	}{
		{"none", tlsx.Files{}, nil},
		{"all", tlsx.Files{CertFile: good.Cert, KeyFile: good.Key, CAFile: good.CA}, nil},
		{"no key", tlsx.Files{CertFile: good.Cert, CAFile: good.CA}, tlsx.ErrIncomplete},
		{"only a CA", tlsx.Files{CAFile: good.CA}, tlsx.ErrIncomplete},
		{"missing file", tlsx.Files{CertFile: good.Cert + ".gone", KeyFile: good.Key, CAFile: good.CA}, tlsx.ErrKeyPair},
		{"key of another certificate", tlsx.Files{CertFile: good.Cert, KeyFile: otherKey, CAFile: good.CA}, tlsx.ErrKeyPair},
		{"empty CA bundle", tlsx.Files{CertFile: good.Cert, KeyFile: good.Key, CAFile: empty}, tlsx.ErrCA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.files.Check()
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Check() = %v, want %v", err, tt.want)
			}
			if tt.want != nil {
				if _, err := tlsx.New(tt.files, 0, slog.New(&logRecorder{})); !errors.Is(err, tt.want) {
					t.Fatalf("New() = %v, want %v", err, tt.want)
				}
			}
		})
	}
}

func TestLeafIsTheCertificatePresented(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	f := testcerts.Write(t, t.TempDir(), ca.Identity(t, "persister"), ca)
	leaf, err := tlsx.Files{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "persister" || len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://telemesh/persister" {
		t.Errorf("leaf %s %v, want the persister's certificate with its identity", leaf.Subject, leaf.URIs)
	}
	for _, bad := range []string{f.Key, filepath.Join(t.TempDir(), "missing.crt")} {
		if _, err := (tlsx.Files{CertFile: bad}).Leaf(); !errors.Is(err, tlsx.ErrKeyPair) {
			t.Errorf("Leaf of %s: %v, want ErrKeyPair", bad, err)
		}
	}
}
