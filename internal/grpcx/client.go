package grpcx

import (
	"fmt"
	"net"
	"strings"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	// The client-side health checking producer: without it the
	// healthCheckConfig of the service config is ignored.
	_ "google.golang.org/grpc/health"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// serviceConfig spreads calls over every address a dns:/// name resolves to
// and retries calls that failed with Unavailable (a replica going away, a
// stage restarting). Retries are safe: every stage is idempotent on the
// dedupe key. Client-side health checking watches each replica's health
// service, so round_robin sends only to replicas that say SERVING: not to
// one whose catalog is not loaded or whose Postgres is unreachable, nor to
// one draining before it stops.
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "healthCheckConfig": {"serviceName": ""},
  "methodConfig": [{
    "name": [{}],
    "waitForReady": true,
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.05s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// reconnectBackoff paces the attempts to reach a stage that went away.
// gRPC's default grows to two minutes, so a stage down for a few seconds
// (killed, or restarted by a deploy) was reached again up to several
// seconds after it was back, with calls waiting for it all along; capped
// at a second, the next stage is reached within a second of its return,
// at the cost of one connection attempt a second while it is down.
var reconnectBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}

// ClientConfig holds the options of a connection to the next stage.
type ClientConfig struct {
	// MaxMsgBytes bounds requests and responses.
	MaxMsgBytes int
	// Credentials secure the connection; nil means plaintext.
	Credentials credentials.TransportCredentials
	// Metrics, if set, records client-side call metrics.
	Metrics *grpcprom.ClientMetrics
	// TracerProvider, if set, traces every call and sends the trace
	// context with it. Nil is tracing off.
	TracerProvider trace.TracerProvider
}

// Dial returns a connection to target: host:port, dns:///host:port (every
// address the name resolves to), or a comma-separated list of host:port
// replicas. The
// connection is lazy: it connects on first use and reconnects by itself.
// Deadlines propagate: a call made with the incoming call's context carries
// its remaining deadline to the next stage.
func Dial(target string, cfg ClientConfig) (*grpc.ClientConn, error) {
	creds := cfg.Credentials
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	maxMsg := cfg.MaxMsgBytes
	if maxMsg == 0 {
		maxMsg = DefaultServerConfig().MaxRecvMsgBytes
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnectBackoff, MinConnectTimeout: 5 * time.Second}),
	}
	if h := clientStatsHandler(cfg.TracerProvider); h != nil {
		opts = append(opts, grpc.WithStatsHandler(h))
	}
	if cfg.Metrics != nil {
		opts = append(opts,
			grpc.WithChainUnaryInterceptor(cfg.Metrics.UnaryClientInterceptor()),
			grpc.WithChainStreamInterceptor(cfg.Metrics.StreamClientInterceptor()))
	}
	if addrs := strings.Split(target, ","); len(addrs) > 1 {
		// A fixed list of replicas (no DNS name to resolve): a manual
		// resolver hands every address to round_robin.
		r := manual.NewBuilderWithScheme("static")
		state := resolver.State{}
		for _, a := range addrs {
			a = strings.TrimSpace(a)
			// With TLS each replica's certificate is checked against its
			// own host, not against the whole list.
			host, _, err := net.SplitHostPort(a)
			if err != nil {
				host = a
			}
			state.Addresses = append(state.Addresses, resolver.Address{Addr: a, ServerName: host})
		}
		r.InitialState(state)
		opts = append(opts, grpc.WithResolvers(r))
		target = "static:///" + strings.Join(addrs, ",")
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
	}
	return conn, nil
}
