package persister

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
)

// Config tunes the stage.
type Config struct {
	// PublishTimeout bounds the call to the publisher; past it the rows are
	// publish_failed and the publisher's retry loop takes them.
	PublishTimeout time.Duration
	// PublishLease is how long a pending row is left to the synchronous
	// publish before the retry loop may take it. The persister renews it
	// every third of it while its call to the publisher is under way, so
	// it bounds how long the rows of a crashed persister wait, not how
	// long a publish may take.
	PublishLease time.Duration
	// RetryDelay is when a publish_failed row is first retried.
	RetryDelay time.Duration
}

// DefaultConfig returns the settings used when none are given.
func DefaultConfig() Config {
	return Config{PublishTimeout: 5 * time.Second, PublishLease: 3 * time.Second, RetryDelay: time.Second}
}

// RegisterFlags registers the settings an operator gives the persister on
// fs, with c's values as their defaults.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&c.PublishTimeout, "publish-timeout", c.PublishTimeout, "bound of the call to the publisher; past it rows are publish_failed and retried")
	fs.DurationVar(&c.PublishLease, "publish-lease", c.PublishLease, "how long the rows of a persister that stopped wait before the retry loop takes them (renewed while its publish is under way)")
}

// Validate checks the settings and names the first bad one by its flag.
func (c Config) Validate() error {
	if c.PublishTimeout <= 0 {
		return config.Invalid("publish-timeout", "must be positive")
	}
	if c.PublishLease < 300*time.Millisecond {
		return config.Invalid("publish-lease", "%s is too short: it is renewed every third of it while a publish is under way", c.PublishLease)
	}
	return nil
}
