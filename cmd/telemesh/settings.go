package main

import (
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/grpcx"
)

func addProcessFlags(fs *pflag.FlagSet, s *app.Process, grpcPort, adminPort string) {
	def := grpcx.DefaultServerConfig()
	host, _ := os.Hostname()
	fs.StringVar(&s.Listen, "listen", ":"+grpcPort, "gRPC listen address host:port (port 0 picks a free one)")
	fs.StringVar(&s.AdminListen, "admin-listen", ":"+adminPort, "admin HTTP listen address for /metrics, /healthz, /readyz and /debug/pprof")
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
	config.MarkSecret(fs, "database-url")
}
