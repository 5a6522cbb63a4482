package main

import (
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/grpcx"
	"github.com/telemesh/telemesh/internal/tlsx"
)

func addProcessFlags(fs *pflag.FlagSet, s *app.Process, grpcPort, adminPort string) {
	def := grpcx.DefaultServerConfig()
	host, _ := os.Hostname()
	fs.StringVar(&s.Listen, "listen", ":"+grpcPort, "gRPC listen address host:port (port 0 picks a free one)")
	fs.StringVar(&s.AdminListen, "admin-listen", ":"+adminPort, "admin HTTP listen address for /metrics, /healthz, /readyz (and /debug/pprof with --pprof); unauthenticated, so keep it off the public network")
	addPprofFlag(fs, &s.Pprof)
	fs.StringVar(&s.DatabaseURL, "database-url", "", "Postgres URL, e.g. postgres://telemesh@db:5432/telemesh (required)")
	fs.StringVar(&s.LogFormat, "log-format", "auto", "log format: auto (text on a terminal, else json), text or json")
	fs.StringVar(&s.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&s.ShutdownGrace, "shutdown-grace", 30*time.Second, "time allowed on SIGTERM to finish batches in flight")
	fs.BoolVar(&s.Reflection, "reflection", true, "serve gRPC server reflection (grpcurl without proto files)")
	fs.DurationVar(&s.RequestTimeout, "request-timeout", def.RequestTimeout, "upper bound of one gRPC call")
	fs.IntVar(&s.MaxRecvMsgBytes, "max-recv-msg-bytes", def.MaxRecvMsgBytes, "largest gRPC request accepted, in bytes")
	fs.Uint32Var(&s.MaxConcurrentStreams, "max-concurrent-streams", def.MaxConcurrentStreams, "gRPC calls in flight per connection")
	fs.DurationVar(&s.MaxConnectionAge, "max-connection-age", def.MaxConnectionAge, "close client connections after this long so clients re-resolve and spread over new replicas")
	fs.StringVar(&s.Instance, "instance", host, "instance name recorded in stage logs (the pod name on Kubernetes)")
	fs.StringVar(&s.StageLogMode, "stage-log-mode", "all", "which stage rows to record: all, sampled or failures")
	fs.Float64Var(&s.StageLogSampleRate, "stage-log-sample-rate", 0.1, "fraction of messages recorded in sampled mode, 0..1 (deterministic on the dedupe key)")
	fs.IntVar(&s.StoredPayloadBytes, "stored-payload-bytes", app.DefaultProcess().StoredPayloadBytes, "largest payload kept whole in ingestion_messages.raw_payload; of a longer one only the first bytes, its size and its SHA-256 are kept, and no copy in the telemetry row or stage logs")
	fs.IntVar(&s.StageLogSnapshotBytes, "stage-log-snapshot-bytes", app.DefaultProcess().StageLogSnapshotBytes, `largest input or output snapshot, change set or errors kept in one stage-log row; a longer one is cut and marked {"truncated": true, ...}`)
	fs.StringVar(&s.HealthListen, "health-listen", "", "plaintext listen address serving grpc.health.v1 alone, for probes while the gRPC port requires client certificates (empty: off)")
	addTLSFlags(fs, &s.TLS, &s.TLSServerName)
	fs.StringVar(&s.TLSTrustDomain, "tls-trust-domain", grpcx.DefaultTrustDomain,
		"trust domain of the identities in the stages' certificates: with mutual TLS each call is admitted only from the stages (and operator tooling) allowed to make it, known by the URI SAN spiffe://<trust domain>/<name> or the DNS SAN <name>.<trust domain> of their certificate")
	config.MarkSecret(fs, "database-url")
}

// addPprofFlag registers --pprof, which every process with an admin port
// has.
func addPprofFlag(fs *pflag.FlagSet, on *bool) {
	fs.BoolVar(on, "pprof", false, "also serve the runtime profiles under /debug/pprof/ on the admin port, which anyone reaching the port can read; for profiling sessions")
}

// addTLSFlags registers the mutual TLS flags that the stages and the
// commands dialling them share.
func addTLSFlags(fs *pflag.FlagSet, files *tlsx.Files, serverName *string) {
	fs.StringVar(&files.CertFile, "tls-cert-file", "", "PEM certificate for mutual TLS between stages, presented as server and as client, with its identity as URI SAN spiffe://telemesh/<stage> (spiffe://telemesh/operator for operator tooling); with --tls-key-file and --tls-ca-file, re-read when the files change")
	fs.StringVar(&files.KeyFile, "tls-key-file", "", "PEM private key of --tls-cert-file")
	fs.StringVar(&files.CAFile, "tls-ca-file", "", "PEM bundle of the CAs that peers' certificates must chain to")
	fs.StringVar(serverName, "tls-server-name", "", "name the stages' certificates are verified against (default: the host of each target)")
}
