package grpcx_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/telemesh/telemesh/internal/grpcx"
	"github.com/telemesh/telemesh/internal/testcerts"
	"github.com/telemesh/telemesh/internal/tlsx"
)

// mtlsServer serves the health service and reflection over mutual TLS with
// a certificate of the CA, checking calls against policy (none when nil).
func mtlsServer(t *testing.T, ca *testcerts.CA, policy *grpcx.Policy) string {
	t.Helper()
	cfg := grpcx.DefaultServerConfig()
	cfg.Credentials = reloader(t, ca, ca.Identity(t, "validator")).ServerCredentials()
	cfg.Authorize = policy
	_, addr := serve(t, cfg)
	return addr
}

// reloader writes the pair and the CA into a directory and loads them.
func reloader(t *testing.T, ca *testcerts.CA, p testcerts.Pair) *tlsx.Reloader {
	t.Helper()
	f := testcerts.Write(t, t.TempDir(), p, ca)
	r, err := tlsx.New(tlsx.Files{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// as returns credentials that present the pair.
func as(t *testing.T, ca *testcerts.CA, p testcerts.Pair) credentials.TransportCredentials {
	t.Helper()
	return reloader(t, ca, p).ClientCredentials("")
}

// testPolicy admits health checks from the validator and the operator,
// health watches from any certificate of the CA, reflection from the
// operator, and nothing else.
var testPolicy = grpcx.Policy{Callers: map[string][]string{
	"/grpc.health.v1.Health/Check":        {"validator", "operator"},
	"grpc.health.v1.Health":               {grpcx.AnyPeer},
	"grpc.reflection.v1.ServerReflection": {"operator"},
}}

func check(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// watch starts a health watch and returns the status of its first answer.
func watch(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

func TestMTLSCallersAreAuthorizedByIdentity(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	addr := mtlsServer(t, ca, &testPolicy)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	const checkMethod = "/grpc.health.v1.Health/Check"

	for _, tc := range []struct {
		name string
		cert testcerts.Pair
		// wantIn is what a refusal's message holds; empty when the call
		// passes.
		wantIn []string
	}{
		{"the right stage by URI SAN", ca.Identity(t, "validator"), nil},
		{"the operator by DNS SAN", ca.IssueSpec(t, testcerts.Spec{CommonName: "ops", Hosts: []string{"127.0.0.1", "operator.telemesh"}}), nil},
		{"another stage", ca.Identity(t, "deriver"),
			[]string{`caller "deriver" may not call ` + checkMethod, "only validator, operator may"}},
		{"a common name is no identity", ca.Issue(t, "validator"),
			[]string{"no telemesh identity", `"CN=validator"`, "spiffe://telemesh/<name>", checkMethod}},
		{"another trust domain", ca.IssueSpec(t, testcerts.Spec{CommonName: "x", URIs: []string{"spiffe://elsewhere/validator"}}),
			[]string{"no telemesh identity", checkMethod}},
		{"a deeper SPIFFE path", ca.IssueSpec(t, testcerts.Spec{CommonName: "x", URIs: []string{"spiffe://telemesh/ns/validator"}}),
			[]string{"no telemesh identity", checkMethod}},
		{"a DNS name of another domain", ca.IssueSpec(t, testcerts.Spec{CommonName: "x", Hosts: []string{"127.0.0.1", "validator.example.com"}}),
			[]string{"no telemesh identity", checkMethod}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := check(ctx, dialServer(t, addr, as(t, ca, tc.cert)))
			if tc.wantIn == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			st, _ := status.FromError(err)
			if st.Code() != codes.PermissionDenied {
				t.Fatalf("%v, want PermissionDenied", err)
			}
			if strings.Contains(st.Message(), "\n") {
				t.Errorf("message of more than one line: %q", st.Message())
			}
			for _, want := range tc.wantIn {
				if !strings.Contains(st.Message(), want) {
					t.Errorf("message %q lacks %q", st.Message(), want)
				}
			}
		})
	}

	// A method's own entry wins over its service's: any certificate of the
	// CA may watch.
	deriver := dialServer(t, addr, as(t, ca, ca.Identity(t, "deriver")))
	if err := watch(ctx, deriver); err != nil {
		t.Errorf("the deriver's health watch (any peer): %v", err)
	}
	// Streams are checked too: reflection is the operator's.
	if _, err := listServices(ctx, deriver); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(err.Error(), `caller "deriver" may not call /grpc.reflection.v1.ServerReflection/ServerReflectionInfo`) {
		t.Errorf("the deriver's reflection: %v, want PermissionDenied naming it and the method", err)
	}
	if _, err := listServices(ctx, dialServer(t, addr, as(t, ca, ca.Identity(t, "operator")))); err != nil {
		t.Errorf("the operator's reflection: %v", err)
	}
	// What the table does not name, no one may call.
	if _, err := listServices(ctx, dialServer(t, mtlsServer(t, ca, &grpcx.Policy{Callers: map[string][]string{
		"grpc.health.v1.Health": {"operator"},
	}}), as(t, ca, ca.Identity(t, "operator")))); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no caller may") {
		t.Errorf("reflection absent from the table: %v, want PermissionDenied, no caller may", err)
	}
}

func TestMTLSTrustDomainIsConfigurable(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	addr := mtlsServer(t, ca, &grpcx.Policy{TrustDomain: "prod.example", Callers: map[string][]string{
		"grpc.health.v1.Health": {"gateway"},
	}})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	ours := ca.IssueSpec(t, testcerts.Spec{CommonName: "g", URIs: []string{"spiffe://prod.example/gateway"}})
	if err := check(ctx, dialServer(t, addr, as(t, ca, ours))); err != nil {
		t.Errorf("the gateway of the trust domain: %v", err)
	}
	if err := check(ctx, dialServer(t, addr, as(t, ca, ca.Identity(t, "gateway")))); status.Code(err) != codes.PermissionDenied {
		t.Errorf("the gateway of the default trust domain: %v, want PermissionDenied", err)
	}
	for _, bad := range []string{"", "Prod", "a/b", "spiffe://x", strings.Repeat("a", 256)} {
		if err := grpcx.CheckTrustDomain(bad); err == nil {
			t.Errorf("trust domain %q accepted", bad)
		}
	}
}

func TestWithoutPolicyEveryCallerPasses(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	// mTLS without a policy: any certificate of the CA, as before.
	if err := check(ctx, dialServer(t, mtlsServer(t, ca, nil), as(t, ca, ca.Issue(t, "anyone")))); err != nil {
		t.Errorf("mTLS without a policy: %v", err)
	}
	// No TLS at all: nothing changes.
	_, addr := serve(t, grpcx.DefaultServerConfig())
	plain := dialServer(t, addr, nil)
	if err := check(ctx, plain); err != nil {
		t.Errorf("plaintext: %v", err)
	}
	if _, err := listServices(ctx, plain); err != nil {
		t.Errorf("plaintext reflection: %v", err)
	}
}

func TestIdentities(t *testing.T) {
	ca := testcerts.NewCA(t, "telemesh test CA")
	parse := func(p testcerts.Pair) *x509.Certificate {
		b, _ := pem.Decode(p.CertPEM)
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	var p grpcx.Policy
	for _, tc := range []struct {
		spec testcerts.Spec
		want []string
	}{
		{testcerts.Spec{CommonName: "persister", URIs: []string{"spiffe://telemesh/persister"}}, []string{"persister"}},
		{testcerts.Spec{CommonName: "both", URIs: []string{"spiffe://telemesh/validator"}, Hosts: []string{"deriver.telemesh", "telemesh-deriver.iot.svc"}},
			[]string{"validator", "deriver"}},
		{testcerts.Spec{CommonName: "operator"}, nil},
		{testcerts.Spec{CommonName: "x", URIs: []string{"spiffe://telemesh/Operator", "spiffe://telemesh:8443/operator",
			"spiffe://u@telemesh/operator", "spiffe://telemesh/operator?x=1", "https://telemesh/operator", "spiffe://telemesh/"}}, nil},
		{testcerts.Spec{CommonName: "x", Hosts: []string{"a.b.telemesh", "telemesh", "operator.telemesh.example"}}, nil},
	} {
		if got := p.Identities(parse(ca.IssueSpec(t, tc.spec))); !slices.Equal(got, tc.want) {
			t.Errorf("%+v: identities %q, want %q", tc.spec, got, tc.want)
		}
	}
}
