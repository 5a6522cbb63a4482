package app

import (
	"github.com/telemesh/telemesh/internal/tracing"

	"errors"
	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	"strings"
	"time"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/grpcx"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/tlsx"
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
var StageLogModes = []string{"all", "sampled", "failures"}

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
		StageLogMode:         "all",
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
