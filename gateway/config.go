package gateway

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/stagelog"
)

// Config tunes the gateway.
type Config struct {
	// Stream is the JetStream stream that captures device subjects.
	Stream string
	// Subjects are the subjects the stream captures.
	Subjects []string
	// Duplicates is the stream's Nats-Msg-Id window.
	Duplicates time.Duration
	// MaxAge bounds how long the stream keeps messages, acknowledged or not.
	MaxAge time.Duration
	// Replicas is the stream's replica count (3 in production).
	Replicas int
	// Consumer is the durable pull consumer every gateway replica shares.
	Consumer string
	// AckWait is how long a delivered message may go without an ack or a
	// sign of progress before JetStream redelivers it. A batch in flight
	// sends progress every AckWait/3, so AckWait bounds only how long the
	// messages of a crashed gateway wait, not how long a batch may take.
	AckWait time.Duration
	// MaxDeliver bounds deliveries; the last one that fails is dead-lettered.
	MaxDeliver int
	// Backoff is the redelivery delay after each failed delivery.
	Backoff []time.Duration
	// MaxAckPending bounds messages delivered and not yet acknowledged,
	// over every replica sharing the consumer. 0 sizes it to one
	// replica's batches in flight and the one batch gathered for the next
	// free worker (BatchSize x (Concurrency + 1)): a worker that finishes
	// starts a full batch at once instead of one gathered from the few
	// messages its acks let through, and nothing more waits unstarted.
	MaxAckPending int
	// BatchSize and BatchAge close a batch, whichever comes first.
	BatchSize int
	BatchAge  time.Duration
	// Concurrency is the number of batches in flight.
	Concurrency int
	// CallTimeout bounds one batch's trip down the chain.
	CallTimeout time.Duration
	// OwnPrefixes are telemesh's output subjects, never consumed.
	OwnPrefixes []string
	// StoredPayloadBytes is the stored-payload limit of dead letters: of a
	// longer payload only the first bytes, its size and its SHA-256 are
	// kept.
	StoredPayloadBytes int
}

// DefaultConfig returns the settings used when none are given.
func DefaultConfig() Config {
	return Config{
		Stream:     "TELEMETRY",
		Subjects:   []string{"devices.>"},
		Duplicates: 2 * time.Minute,
		MaxAge:     7 * 24 * time.Hour,
		Replicas:   1,
		Consumer:   "telemesh-gateway",
		AckWait:    5 * time.Second,
		MaxDeliver: 15,
		// Short first delays: a stage restarting (a deploy rolls them one
		// after another) fails a batch several times within seconds, and
		// each failure counts; longer ones relieve a stage that stays
		// down, and the dead letter comes only after about four minutes.
		Backoff:     []time.Duration{time.Second, time.Second, time.Second, 2 * time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second},
		BatchSize:   500,
		BatchAge:    5 * time.Millisecond,
		Concurrency: 8,
		CallTimeout: 45 * time.Second,
		OwnPrefixes: []string{"iot.v1.analytics", "iot.v1.invalid"},

		StoredPayloadBytes: stagelog.DefaultLimits().PayloadBytes,
	}
}

// RegisterFlags registers the settings an operator gives the gateway on
// fs, with c's values as their defaults.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	config.ListVar(fs, &c.Subjects, "subjects", "subjects the stream captures, comma-separated")
	fs.StringVar(&c.Stream, "stream", c.Stream, "JetStream stream that captures device telemetry")
	fs.StringVar(&c.Consumer, "consumer", c.Consumer, "durable pull consumer shared by every gateway replica")
	fs.IntVar(&c.Replicas, "stream-replicas", c.Replicas, "stream replicas (3 in production)")
	fs.DurationVar(&c.MaxAge, "stream-max-age", c.MaxAge, "how long the stream keeps messages")
	fs.DurationVar(&c.Duplicates, "stream-duplicates", c.Duplicates, "the stream's Nats-Msg-Id duplicate window")
	fs.DurationVar(&c.AckWait, "ack-wait", c.AckWait, "redelivery after this long without an ack or a sign of progress (batches in flight signal it every third of this)")
	fs.IntVar(&c.MaxDeliver, "max-deliver", c.MaxDeliver, "deliveries before a message is dead-lettered")
	fs.IntVar(&c.MaxAckPending, "max-ack-pending", c.MaxAckPending, "messages delivered and not yet acknowledged, over every replica (0: --batch-size x (--concurrency + 1))")
	fs.IntVar(&c.BatchSize, "batch-size", c.BatchSize, "messages per batch")
	fs.DurationVar(&c.BatchAge, "batch-age", c.BatchAge, "a batch closes after this long even when not full")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "batches in flight")
	fs.DurationVar(&c.CallTimeout, "call-timeout", c.CallTimeout, "bound of one batch's trip down the chain")
}

// ackPending is the consumer's MaxAckPending: the setting, or when it is 0
// the batches one replica has in flight and the one it gathers next.
func (c Config) ackPending() int {
	if c.MaxAckPending > 0 {
		return c.MaxAckPending
	}
	return c.BatchSize * (c.Concurrency + 1)
}

// Validate checks the settings and names the first bad one by its flag.
func (c Config) Validate() error {
	switch {
	case len(c.Subjects) == 0:
		return config.Invalid("subjects", "at least one subject is needed")
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return config.Invalid("batch-size", "%d is out of range 1..10000", c.BatchSize)
	case c.BatchAge <= 0:
		return config.Invalid("batch-age", "must be positive")
	case c.Concurrency < 1:
		return config.Invalid("concurrency", "must be at least 1")
	case c.MaxDeliver < 2:
		return config.Invalid("max-deliver", "must be at least 2 so a transient failure is retried")
	case c.AckWait < 300*time.Millisecond:
		return config.Invalid("ack-wait", "%s is too short: batches in flight signal progress every third of it", c.AckWait)
	case c.CallTimeout <= 0:
		return config.Invalid("call-timeout", "must be positive")
	case c.MaxAckPending < 0:
		return config.Invalid("max-ack-pending", "must not be negative (0 sizes it to --batch-size x (--concurrency + 1))")
	case c.MaxAckPending > 0 && c.MaxAckPending < c.BatchSize:
		return config.Invalid("max-ack-pending", "%d holds less than one batch of --batch-size %d", c.MaxAckPending, c.BatchSize)
	case c.Replicas < 1 || c.Replicas > 5:
		return config.Invalid("stream-replicas", "%d is out of range 1..5", c.Replicas)
	}
	return nil
}
