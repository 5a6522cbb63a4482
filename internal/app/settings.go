package app

import (
	"errors"
	"strings"
	"time"

	"github.com/spf13/pflag"

	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/grpcx"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/tlsx"
	"github.com/telemesh/telemesh/internal/tracing"
)

// Process holds the settings every stage process has.
type Process struct {
	// Tracing is what the OTEL_* variables say; no endpoint is tracing off.
	Tracing tracing.Config
	// ReadyEvery is how often the stage checks it can do its work, for its
	// health status; 0 is every second.
	ReadyEvery           time.Duration
	Listen               string
	AdminListen          string
	DatabaseURL          string
	LogFormat            string
	LogLevel             string
	ShutdownGrace        time.Duration
	Reflection           bool
	RequestTimeout       time.Duration
	MaxRecvMsgBytes      int
	MaxConcurrentStreams uint32
	MaxConnectionAge     time.Duration
	Instance             string
	StageLogMode         string
	StageLogSampleRate   float64
	// StoredPayloadBytes is the stored-payload limit: of a longer payload
	// only the first bytes, its size and its SHA-256 are kept, in the
	// message row alone.
	StoredPayloadBytes int
	// StageLogSnapshotBytes bounds each snapshot, change set and errors of
	// a stage-log row.
	StageLogSnapshotBytes int
	// TLS names the files of mutual TLS between stages; none means
	// plaintext.
	TLS tlsx.Files
	// TLSServerName, if set, is the name next hops' certificates are
	// verified against, instead of the host of their target.
	TLSServerName string
	// TLSTrustDomain is the trust domain of the identities in the stages'
	// certificates (spiffe://<trust domain>/<stage>); empty means
	// [grpcx.DefaultTrustDomain].
	TLSTrustDomain string
	// HealthListen, if set, serves grpc.health.v1 alone there in plaintext,
	// for probes that cannot present a client certificate.
	HealthListen string
	// Pprof serves the runtime profiles on the admin port as well.
	Pprof bool
}

// minStoredBytes is the least a stored-payload or snapshot limit may be:
// enough for a cut value's marker and a useful head.
const minStoredBytes = 1024

// StageLogModes are the ingestion_stage_logs modes of the system telemesh
// replaces.
var StageLogModes = []string{string(stagelog.ModeAll), string(stagelog.ModeSampled), string(stagelog.ModeFailures)}

// RegisterFlags registers the settings every stage process has on fs,
// with s's values as their defaults.
func (s *Process) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&s.Listen, "listen", s.Listen, "gRPC listen address host:port (port 0 picks a free one)")
	fs.StringVar(&s.AdminListen, "admin-listen", s.AdminListen, "admin HTTP listen address for /metrics, /healthz, /readyz (and /debug/pprof with --pprof); unauthenticated, so keep it off the public network")
	RegisterPprofFlag(fs, &s.Pprof)
	fs.StringVar(&s.DatabaseURL, "database-url", s.DatabaseURL, "Postgres URL, e.g. postgres://telemesh@db:5432/telemesh (required)")
	fs.StringVar(&s.LogFormat, "log-format", s.LogFormat, "log format: auto (text on a terminal, else json), text or json")
	fs.StringVar(&s.LogLevel, "log-level", s.LogLevel, "log level: debug, info, warn or error")
	fs.DurationVar(&s.ShutdownGrace, "shutdown-grace", s.ShutdownGrace, "time allowed on SIGTERM to finish batches in flight")
	fs.BoolVar(&s.Reflection, "reflection", s.Reflection, "serve gRPC server reflection (grpcurl without proto files)")
	fs.DurationVar(&s.RequestTimeout, "request-timeout", s.RequestTimeout, "upper bound of one gRPC call")
	fs.IntVar(&s.MaxRecvMsgBytes, "max-recv-msg-bytes", s.MaxRecvMsgBytes, "largest gRPC request accepted, in bytes")
	fs.Uint32Var(&s.MaxConcurrentStreams, "max-concurrent-streams", s.MaxConcurrentStreams, "gRPC calls in flight per connection")
	fs.DurationVar(&s.MaxConnectionAge, "max-connection-age", s.MaxConnectionAge, "close client connections after this long so clients re-resolve and spread over new replicas")
	fs.StringVar(&s.Instance, "instance", s.Instance, "instance name recorded in stage logs (the pod name on Kubernetes)")
	fs.StringVar(&s.StageLogMode, "stage-log-mode", s.StageLogMode, "which stage rows to record: all, sampled or failures")
	fs.Float64Var(&s.StageLogSampleRate, "stage-log-sample-rate", s.StageLogSampleRate, "fraction of messages recorded in sampled mode, 0..1 (deterministic on the dedupe key)")
	fs.IntVar(&s.StoredPayloadBytes, "stored-payload-bytes", s.StoredPayloadBytes, "largest payload kept whole in ingestion_messages.raw_payload; of a longer one only the first bytes, its size and its SHA-256 are kept, and no copy in the telemetry row or stage logs")
	fs.IntVar(&s.StageLogSnapshotBytes, "stage-log-snapshot-bytes", s.StageLogSnapshotBytes, `largest input or output snapshot, change set or errors kept in one stage-log row; a longer one is cut and marked {"truncated": true, ...}`)
	fs.StringVar(&s.HealthListen, "health-listen", s.HealthListen, "plaintext listen address serving grpc.health.v1 alone, for probes while the gRPC port requires client certificates (empty: off)")
	RegisterTLSFlags(fs, &s.TLS, &s.TLSServerName)
	fs.StringVar(&s.TLSTrustDomain, "tls-trust-domain", s.TLSTrustDomain,
		"trust domain of the identities in the stages' certificates: with mutual TLS each call is admitted only from the stages (and operator tooling) allowed to make it, known by the URI SAN spiffe://<trust domain>/<name> or the DNS SAN <name>.<trust domain> of their certificate")
	config.MarkSecret(fs, "database-url")
}

// RegisterPprofFlag registers --pprof, which every process with an admin
// port has.
func RegisterPprofFlag(fs *pflag.FlagSet, on *bool) {
	fs.BoolVar(on, "pprof", *on, "also serve the runtime profiles under /debug/pprof/ on the admin port, which anyone reaching the port can read; for profiling sessions")
}

// RegisterTLSFlags registers the mutual TLS flags that the stages and the
// commands dialling them share, with the values of files and serverName
// as their defaults.
func RegisterTLSFlags(fs *pflag.FlagSet, files *tlsx.Files, serverName *string) {
	fs.StringVar(&files.CertFile, "tls-cert-file", files.CertFile, "PEM certificate for mutual TLS between stages, presented as server and as client, with its identity as URI SAN spiffe://telemesh/<stage> (spiffe://telemesh/operator for operator tooling); with --tls-key-file and --tls-ca-file, re-read when the files change")
	fs.StringVar(&files.KeyFile, "tls-key-file", files.KeyFile, "PEM private key of --tls-cert-file")
	fs.StringVar(&files.CAFile, "tls-ca-file", files.CAFile, "PEM bundle of the CAs that peers' certificates must chain to")
	fs.StringVar(serverName, "tls-server-name", *serverName, "name the stages' certificates are verified against (default: the host of each target)")
}

// Validate checks every setting and names the first bad one.
func (s *Process) Validate() error {
	if err := config.CheckListenAddr("listen", s.Listen); err != nil {
		return err
	}
	if err := config.CheckListenAddr("admin-listen", s.AdminListen); err != nil {
		return err
	}
	if s.DatabaseURL == "" {
		return config.Invalid("database-url", "required")
	}
	if _, err := pg.ParseURL(s.DatabaseURL); err != nil {
		return config.Invalid("database-url", "%v", err)
	}
	if err := config.CheckOneOf("log-format", s.LogFormat, logging.Formats...); err != nil {
		return err
	}
	if err := config.CheckOneOf("log-level", s.LogLevel, logging.Levels...); err != nil {
		return err
	}
	if s.ShutdownGrace <= 0 {
		return config.Invalid("shutdown-grace", "must be positive")
	}
	if s.RequestTimeout <= 0 {
		return config.Invalid("request-timeout", "must be positive")
	}
	if s.MaxRecvMsgBytes < 4<<10 || s.MaxRecvMsgBytes > 1<<30 {
		return config.Invalid("max-recv-msg-bytes", "%d is out of range 4096..1073741824", s.MaxRecvMsgBytes)
	}
	if s.MaxConcurrentStreams == 0 {
		return config.Invalid("max-concurrent-streams", "must be positive")
	}
	if s.MaxConnectionAge <= 0 {
		return config.Invalid("max-connection-age", "must be positive")
	}
	if err := config.CheckOneOf("stage-log-mode", s.StageLogMode, StageLogModes...); err != nil {
		return err
	}
	if s.StageLogSampleRate < 0 || s.StageLogSampleRate > 1 {
		return config.Invalid("stage-log-sample-rate", "%v is out of range 0..1", s.StageLogSampleRate)
	}
	if s.StoredPayloadBytes < minStoredBytes || s.StoredPayloadBytes > 1<<30 {
		return config.Invalid("stored-payload-bytes", "%d is out of range %d..1073741824", s.StoredPayloadBytes, minStoredBytes)
	}
	if s.StageLogSnapshotBytes < minStoredBytes || s.StageLogSnapshotBytes > 64<<20 {
		return config.Invalid("stage-log-snapshot-bytes", "%d is out of range %d..67108864", s.StageLogSnapshotBytes, minStoredBytes)
	}
	if s.HealthListen != "" {
		if err := config.CheckListenAddr("health-listen", s.HealthListen); err != nil {
			return err
		}
	}
	if s.TLSTrustDomain != "" {
		if err := grpcx.CheckTrustDomain(s.TLSTrustDomain); err != nil {
			return config.Invalid("tls-trust-domain", "%v", err)
		}
	}
	return CheckTLS(s.TLS, s.TLSServerName)
}

// trustDomain returns the trust domain of the identities.
func (s *Process) trustDomain() string {
	if s.TLSTrustDomain == "" {
		return grpcx.DefaultTrustDomain
	}
	return s.TLSTrustDomain
}

// CheckTLS reports whether the --tls-* settings are usable: all three files
// or none, readable, a certificate matching its key and a CA bundle holding
// a certificate. It names the flag to fix.
func CheckTLS(files tlsx.Files, serverName string) error {
	if serverName != "" && !files.Enabled() {
		return config.Invalid("tls-server-name", "needs --tls-cert-file, --tls-key-file and --tls-ca-file")
	}
	return tlsInvalid(files.Check())
}

// tlsInvalid names the flag behind a [tlsx] error.
func tlsInvalid(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, tlsx.ErrIncomplete):
		return config.Invalid("tls-cert-file", "%v: set --tls-cert-file, --tls-key-file and --tls-ca-file, or none", err)
	case errors.Is(err, tlsx.ErrCA):
		return config.Invalid("tls-ca-file", "%v", err)
	default:
		return config.Invalid("tls-cert-file", "%v", err)
	}
}

// ServerConfig returns the gRPC server limits of the settings.
func (s *Process) ServerConfig() grpcx.ServerConfig {
	c := grpcx.DefaultServerConfig()
	c.Reflection = s.Reflection
	c.RequestTimeout = s.RequestTimeout
	c.MaxRecvMsgBytes = s.MaxRecvMsgBytes
	c.MaxSendMsgBytes = s.MaxRecvMsgBytes
	c.MaxConcurrentStreams = s.MaxConcurrentStreams
	c.MaxConnectionAge = s.MaxConnectionAge
	c.Validated = publicMethod
	return c
}

// publicMethod reports whether a method is reached from outside the mesh:
// the gateway's Ingest, which operators call. Its requests are checked
// field by field; the stages' batches, which only the stage before sends,
// are checked by their handlers for what the stage relies on.
func publicMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/"+gatewayv1.GatewayService_ServiceDesc.ServiceName+"/")
}

// DefaultProcess returns the process settings used when none are given.
func DefaultProcess() Process {
	def := grpcx.DefaultServerConfig()
	return Process{
		LogFormat:            "auto",
		LogLevel:             "info",
		ShutdownGrace:        30 * time.Second,
		Reflection:           true,
		RequestTimeout:       def.RequestTimeout,
		MaxRecvMsgBytes:      def.MaxRecvMsgBytes,
		MaxConcurrentStreams: def.MaxConcurrentStreams,
		MaxConnectionAge:     def.MaxConnectionAge,
		StageLogMode:         string(stagelog.ModeAll),
		StageLogSampleRate:   0.1,
		TLSTrustDomain:       grpcx.DefaultTrustDomain,

		StoredPayloadBytes:    stagelog.DefaultLimits().PayloadBytes,
		StageLogSnapshotBytes: stagelog.DefaultLimits().SnapshotBytes,
	}
}

// StageLogLimits returns what one stage-log row may keep of a message.
func (s *Process) StageLogLimits() stagelog.Limits {
	return stagelog.Limits{SnapshotBytes: s.StageLogSnapshotBytes, PayloadBytes: s.StoredPayloadBytes}
}
