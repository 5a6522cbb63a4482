package validator

import (
	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
)

// Config tunes the stage.
type Config struct {
	// Limits bound each payload before it is decoded.
	Limits Limits
}

// DefaultConfig returns the settings used when none are given.
func DefaultConfig() Config {
	return Config{Limits: DefaultLimits()}
}

// RegisterFlags registers the settings an operator gives the validator on
// fs, with c's values as their defaults.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	l := &c.Limits
	fs.IntVar(&l.MaxBytes, "max-payload-bytes", l.MaxBytes, "largest payload accepted")
	fs.IntVar(&l.MaxKeys, "max-payload-keys", l.MaxKeys, "most keys in one payload, counted over the whole document")
	fs.IntVar(&l.MaxDepth, "max-payload-depth", l.MaxDepth, "deepest nesting of one payload")
}

// Validate checks the settings and names the first bad one by its flag.
func (c Config) Validate() error {
	switch l := c.Limits; {
	case l.MaxBytes < 1:
		return config.Invalid("max-payload-bytes", "must be positive")
	case l.MaxKeys < 1:
		return config.Invalid("max-payload-keys", "must be positive")
	case l.MaxDepth < 1:
		return config.Invalid("max-payload-depth", "must be positive")
	}
	return nil
}
