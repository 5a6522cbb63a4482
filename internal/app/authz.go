package app

import (
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"

	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/grpcx"
)

// Operator is the identity of operator tooling: grpcurl, scripts calling
// the gateway's Ingest, `telemesh status` and `telemesh doctor`.
const Operator = "operator"

// Callers is who may call what when the stages talk mutual TLS: the one
// table of authorization between them, by the identity in the caller's
// certificate (spiffe://<trust domain>/<name>, see [grpcx.Policy]). Each
// stage service is open to the stages that call it ([NextHops]) and to
// nothing else; the gateway's Ingest is open to operator tooling. The
// health service is open to any certificate of the CA, as probes and
// `telemesh status` only learn SERVING or not from it, and each caller
// watches it (client-side health checking): a caller refused it would
// never send a call; reflection, which
// describes every method, to the operator (grpcurl). Without mutual TLS
// there is no identity and no check.
var Callers = map[string][]string{
	validatorv1.ValidatorService_ServiceDesc.ServiceName: {Gateway},
	deriverv1.DeriverService_ServiceDesc.ServiceName:     {Validator},
	persisterv1.PersisterService_ServiceDesc.ServiceName: {Validator, Deriver},
	publisherv1.PublisherService_ServiceDesc.ServiceName: {Persister},
	gatewayv1.GatewayService_ServiceDesc.ServiceName:     {Operator},

	healthpb.Health_ServiceDesc.ServiceName:                    {grpcx.AnyPeer},
	reflectionv1.ServerReflection_ServiceDesc.ServiceName:      {Operator},
	reflectionv1alpha.ServerReflection_ServiceDesc.ServiceName: {Operator},
}

// Policy returns the authorization of the stages in the trust domain td.
func Policy(td string) *grpcx.Policy {
	return &grpcx.Policy{TrustDomain: td, Callers: Callers}
}

// CheckIdentity reports, with mutual TLS, a certificate that does not carry
// the identity of the stage o runs when that stage calls others (its next
// hops would refuse every call); it names --tls-cert-file. [Serve] checks
// the same; this lets a command say so before it starts.
func (o *Options) CheckIdentity() error {
	if !o.Process.TLS.Enabled() {
		return nil
	}
	leaf, err := o.Process.TLS.Leaf()
	if err != nil {
		return tlsInvalid(err)
	}
	return checkOwnIdentity(o.Stage, leaf, o.Process.trustDomain())
}

// checkOwnIdentity reports a certificate that does not carry the identity
// of the stage presenting it, when the stage calls others: its next hops
// would refuse every call, so it is a bad setting, said at start-up.
func checkOwnIdentity(stage string, cert *x509.Certificate, td string) error {
	if len(NextHops[stage]) == 0 {
		return nil
	}
	ids := Policy(td).Identities(cert)
	if slices.Contains(ids, stage) {
		return nil
	}
	carries := "no telemesh identity"
	if len(ids) > 0 {
		carries = "the identity " + strings.Join(ids, ", ")
	}
	return config.Invalid("tls-cert-file", "certificate %q carries %s, not %s: the %s would refuse its calls; issue it with the URI SAN %s",
		cert.Subject.String(), carries, stage, strings.Join(NextHops[stage], " and "), identityURI(td, stage))
}

// identityURI is the URI SAN of a stage's identity.
func identityURI(td, name string) string {
	return fmt.Sprintf("spiffe://%s/%s", td, name)
}
