package grpcx

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// AnyPeer, among the callers of a service in a [Policy], admits every
// client whose certificate the CA signed, whatever identity it carries.
const AnyPeer = "*"

// DefaultTrustDomain is the trust domain of telemesh identities when none
// is configured.
const DefaultTrustDomain = "telemesh"

// ErrTrustDomain is the error of [CheckTrustDomain] for a name that cannot
// be a trust domain.
var ErrTrustDomain = errors.New("a trust domain is lower-case letters, digits, '.', '-' and '_', at most 255 bytes")

// identityName is what the name in an identity may be: one label, as a
// stage is named.
var identityName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// trustDomain is what a trust domain may be (SPIFFE's rule).
var trustDomain = regexp.MustCompile(`^[a-z0-9._-]{1,255}$`)

// CheckTrustDomain reports whether td can be a trust domain.
func CheckTrustDomain(td string) error {
	if !trustDomain.MatchString(td) {
		return fmt.Errorf("%q: %w", td, ErrTrustDomain)
	}
	return nil
}

// Policy says which callers may call which gRPC services and methods of a
// server that requires client certificates. A caller is known by the
// identities its verified certificate carries: a URI SAN
// spiffe://<TrustDomain>/<name>, or, for a CA that cannot issue URI SANs,
// a DNS SAN <name>.<TrustDomain>. The common name is never an identity.
type Policy struct {
	// TrustDomain is the trust domain of the identities;
	// [DefaultTrustDomain] when empty.
	TrustDomain string
	// Callers maps a full method name (/pkg.Service/Method) or a service
	// name (pkg.Service) to the identities that may call it, or [AnyPeer].
	// A method's own entry wins over its service's. A call to anything not
	// listed is refused.
	Callers map[string][]string
}

// domain returns the policy's trust domain.
func (p *Policy) domain() string {
	if p.TrustDomain == "" {
		return DefaultTrustDomain
	}
	return p.TrustDomain
}

// Identities returns the identities cert carries in the policy's trust
// domain, in the order of its SANs.
func (p *Policy) Identities(cert *x509.Certificate) []string {
	if cert == nil {
		return nil
	}
	td := p.domain()
	var ids []string
	add := func(name string) {
		if identityName.MatchString(name) && !slices.Contains(ids, name) {
			ids = append(ids, name)
		}
	}
	for _, u := range cert.URIs {
		// spiffe://<trust domain>/<name>, and nothing else: no port, user,
		// query, fragment or deeper path.
		if u.Scheme != "spiffe" || u.Host != td || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" {
			continue
		}
		if name, ok := strings.CutPrefix(u.Path, "/"); ok && !strings.Contains(name, "/") {
			add(name)
		}
	}
	for _, d := range cert.DNSNames {
		if name, ok := strings.CutSuffix(strings.ToLower(d), "."+td); ok && !strings.Contains(name, ".") {
			add(name)
		}
	}
	return ids
}

// callers returns who may call method, and whether the table names it.
func (p *Policy) callers(method string) ([]string, bool) {
	if c, ok := p.Callers[method]; ok {
		return c, true
	}
	service, _, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	c, ok := p.Callers[service]
	return c, ok
}

// Authorize returns nil when the caller of ctx may call method, else a
// PermissionDenied status with one line naming the caller and the method.
func (p *Policy) Authorize(ctx context.Context, method string) error {
	cert := peerCertificate(ctx)
	if cert == nil {
		return status.Errorf(codes.PermissionDenied, "%s refused: the caller presented no verified client certificate", method)
	}
	allowed, listed := p.callers(method)
	if slices.Contains(allowed, AnyPeer) {
		return nil
	}
	ids := p.Identities(cert)
	for _, id := range ids {
		if slices.Contains(allowed, id) {
			return nil
		}
	}
	var who string
	switch len(ids) {
	case 0:
		who = fmt.Sprintf("a caller with no telemesh identity (certificate %q carries no URI SAN spiffe://%s/<name> and no DNS SAN <name>.%s)",
			cert.Subject.String(), p.domain(), p.domain())
	case 1:
		who = fmt.Sprintf("caller %q", ids[0])
	default:
		who = fmt.Sprintf("caller %q", strings.Join(ids, `", "`))
	}
	if !listed {
		return status.Errorf(codes.PermissionDenied, "%s may not call %s: no caller may", who, method)
	}
	return status.Errorf(codes.PermissionDenied, "%s may not call %s: only %s may", who, method, strings.Join(allowed, ", "))
}

// peerCertificate returns the client certificate of the call, if the TLS
// handshake verified it.
func peerCertificate(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return ti.State.VerifiedChains[0][0]
}

// authorizeUnary checks every unary call against p; with no policy it lets
// every call through.
func authorizeUnary(p *Policy) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if p != nil {
			if err := p.Authorize(ctx, info.FullMethod); err != nil {
				return nil, err
			}
		}
		return handler(ctx, req)
	}
}

// authorizeStream checks every streaming call (reflection, health Watch)
// against p; with no policy it lets every call through.
func authorizeStream(p *Policy) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if p != nil {
			if err := p.Authorize(ss.Context(), info.FullMethod); err != nil {
				return err
			}
		}
		return handler(srv, ss)
	}
}
