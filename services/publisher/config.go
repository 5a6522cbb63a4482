package publisher

import (
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
)

// Config tunes the stage.
type Config struct {
	// RetryEvery is how often the retry loop looks for due rows.
	RetryEvery time.Duration
	// RetryBatch bounds the rows one retry round claims.
	RetryBatch int
	// RetryBase and RetryMax shape the backoff of publish_failed rows.
	RetryBase, RetryMax time.Duration
	// NATSTimeout bounds the device-state writes of one batch, and the wait
	// for its events' acknowledgements. Short, so that a NATS server that
	// went away holds a batch for seconds: what it did not finish is
	// publish_failed and the retry loop takes it again.
	NATSTimeout time.Duration
	// NATS names the bucket and the stream the stage writes to.
	NATS NATSConfig
	// Env is the environment token of the analytics subjects
	// iot.v1.analytics.<env>....
	Env string
}

// DefaultConfig returns the settings used when none are given.
func DefaultConfig() Config {
	return Config{
		RetryEvery: 500 * time.Millisecond, RetryBatch: 500, RetryBase: 500 * time.Millisecond, RetryMax: 5 * time.Minute, NATSTimeout: 2 * time.Second,
		NATS: DefaultNATSConfig(), Env: "local",
	}
}

// RegisterFlags registers the settings an operator gives the publisher on
// fs, with c's values as their defaults.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Env, "env", c.Env, "environment token of the analytics subjects iot.v1.analytics.<env>...")
	fs.StringVar(&c.NATS.Bucket, "kv-bucket", c.NATS.Bucket, "KV bucket of device states")
	fs.StringVar(&c.NATS.AnalyticsStream, "analytics-stream", c.NATS.AnalyticsStream, "stream that captures analytics and invalid events")
	fs.IntVar(&c.NATS.Replicas, "nats-replicas", c.NATS.Replicas, "replicas of the bucket and the analytics stream (3 in production)")
	fs.DurationVar(&c.RetryEvery, "retry-every", c.RetryEvery, "how often publish_failed and stale pending rows are retried")
	fs.IntVar(&c.RetryBatch, "retry-batch", c.RetryBatch, "rows one retry round takes")
	fs.DurationVar(&c.RetryMax, "retry-max-backoff", c.RetryMax, "longest wait between publish retries of a row")
	fs.DurationVar(&c.NATSTimeout, "nats-timeout", c.NATSTimeout, "bound of a batch's device-state writes and of the wait for its events' acks; past it the rows are publish_failed and retried")
}

// Validate checks the settings and names the first bad one by its flag.
func (c Config) Validate() error {
	switch {
	case strings.TrimSpace(c.Env) == "":
		return config.Invalid("env", "must not be empty")
	case c.RetryEvery <= 0:
		return config.Invalid("retry-every", "must be positive")
	case c.RetryBatch < 1:
		return config.Invalid("retry-batch", "must be at least 1")
	case c.NATSTimeout <= 0:
		return config.Invalid("nats-timeout", "must be positive")
	case c.NATS.Replicas < 1 || c.NATS.Replicas > 5:
		return config.Invalid("nats-replicas", "%d is out of range 1..5", c.NATS.Replicas)
	}
	return nil
}
