// Package pipelinestate answers "what is the pipeline doing" for the
// operator: what each stage did over the last minutes and why it failed,
// the pipeline switches and what they hold back, the publish outbox, the
// gateway's backlog in JetStream and each stage's gRPC health. `telemesh
// status`, `telemesh doctor` and the viewer's health panel present it, so
// one question gets one answer wherever it is asked.
//
// A [Reader] reads the parts from Postgres, NATS and the stages; the
// figures are derived from what it read in plain Go ([Activity],
// [PauseOf]). Every query reads a summary kept for it (the per-minute
// counts of ingestion_stage_counts, the entries of publish_outbox), never
// the stage logs or telemetry rows they summarise, so a refresh costs the
// same at 20,000 messages a second as at ten. [Gather] reads it all for
// status; [Doctor] walks the operational decision tree over it.
package pipelinestate

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/credentials"

	"github.com/telemesh/telemesh/internal/health"
	"github.com/telemesh/telemesh/internal/natsx"
	"github.com/telemesh/telemesh/internal/tlsx"
)

// Config says where the mesh is and what to look at.
type Config struct {
	// DatabaseURL is the Postgres the stages write to.
	DatabaseURL string
	// NATSURL is the NATS server the gateway reads from.
	NATSURL string
	// Targets maps each stage name to its gRPC target: host:port,
	// dns:///host:port, or a comma-separated list of host:port.
	Targets map[string]string
	// Stream and Consumer are the gateway's JetStream stream and durable
	// consumer.
	Stream, Consumer string
	// Bucket and AnalyticsStream are the publisher's KV bucket and stream.
	Bucket, AnalyticsStream string
	// Minutes is how far back the stage logs and the outbox are summarised.
	Minutes int
	// Timeout bounds every single check (one health call, one query).
	Timeout time.Duration
	// TLS, when its files are set, makes the health calls to the stages
	// over mutual TLS, as the stages call each other.
	TLS tlsx.Files
	// TLSServerName, if set, is the name the stages' certificates are
	// verified against, instead of the host of each target.
	TLSServerName string
	// NATSAuth authenticates the connection to NATS.
	NATSAuth natsx.Auth
}

// DefaultConfig returns the names and ports a local mesh uses.
func DefaultConfig() Config {
	return Config{
		NATSURL: "nats://127.0.0.1:4222",
		Targets: map[string]string{
			"gateway":   "127.0.0.1:7070",
			"validator": "127.0.0.1:7071",
			"deriver":   "127.0.0.1:7072",
			"persister": "127.0.0.1:7073",
			"publisher": "127.0.0.1:7074",
		},
		Stream:          "TELEMETRY",
		Consumer:        "telemesh-gateway",
		Bucket:          "device-states",
		AnalyticsStream: "TELEMESH_ANALYTICS",
		Minutes:         5,
		Timeout:         3 * time.Second,
	}
}

// withDefaults fills the zero fields of c from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Stream == "" {
		c.Stream = d.Stream
	}
	if c.Consumer == "" {
		c.Consumer = d.Consumer
	}
	if c.Bucket == "" {
		c.Bucket = d.Bucket
	}
	if c.AnalyticsStream == "" {
		c.AnalyticsStream = d.AnalyticsStream
	}
	if c.Minutes <= 0 {
		c.Minutes = d.Minutes
	}
	if c.Timeout <= 0 {
		c.Timeout = d.Timeout
	}
	return c
}

// Reader reads the state of one mesh from its Postgres pool, its
// JetStream and its stages. The pool and the connection behind js stay
// the caller's. Its methods are safe for concurrent use.
type Reader struct {
	pool  *pgxpool.Pool
	js    jetstream.JetStream
	cfg   Config
	creds credentials.TransportCredentials
}

// NewReader returns a reader of the mesh cfg names (its stream, consumer,
// bucket and stage targets) through pool and js. creds are those of the
// health calls to the stages; nil calls them in plaintext.
func NewReader(pool *pgxpool.Pool, js jetstream.JetStream, cfg Config, creds credentials.TransportCredentials) *Reader {
	return &Reader{pool: pool, js: js, cfg: cfg.withDefaults(), creds: creds}
}

// StageHealth asks every stage for its gRPC health, within the reader's
// timeout per call. A stage with no target is UNKNOWN.
func (r *Reader) StageHealth(ctx context.Context) []health.StageHealth {
	return health.CheckStages(ctx, r.cfg.Targets, r.cfg.Timeout, r.creds)
}
