package publisher

import (
	"errors"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
)

func TestConfigValidate(t *testing.T) {
	tests := map[string]struct {
		change func(*Config)
		flag   string
	}{
		"default":           {func(*Config) {}, ""},
		"five replicas":     {func(c *Config) { c.NATS.Replicas = 5 }, ""},
		"one row a round":   {func(c *Config) { c.RetryBatch = 1 }, ""},
		"no env":            {func(c *Config) { c.Env = "" }, "env"},
		"blank env":         {func(c *Config) { c.Env = "  " }, "env"},
		"no retry interval": {func(c *Config) { c.RetryEvery = 0 }, "retry-every"},
		"no retry rows":     {func(c *Config) { c.RetryBatch = 0 }, "retry-batch"},
		"no NATS timeout":   {func(c *Config) { c.NATSTimeout = -time.Second }, "nats-timeout"},
		"no replicas":       {func(c *Config) { c.NATS.Replicas = 0 }, "nats-replicas"},
		"six replicas":      {func(c *Config) { c.NATS.Replicas = 6 }, "nats-replicas"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := DefaultConfig()
			tc.change(&c)
			err := c.Validate()
			if tc.flag == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var inv *config.Error
			if !errors.As(err, &inv) || inv.Flag != tc.flag {
				t.Errorf("got %v, want --%s refused", err, tc.flag)
			}
		})
	}
}

// TestConfigFlags: the flags start at the defaults and set the fields.
func TestConfigFlags(t *testing.T) {
	c := DefaultConfig()
	fs := pflag.NewFlagSet("publisher", pflag.ContinueOnError)
	c.RegisterFlags(fs)
	for name, want := range map[string]string{
		"env": "local", "kv-bucket": "device-states", "analytics-stream": "TELEMESH_ANALYTICS", "nats-replicas": "1",
		"retry-every": "500ms", "retry-batch": "500", "retry-max-backoff": "5m0s", "nats-timeout": "2s",
	} {
		if got := fs.Lookup(name).DefValue; got != want {
			t.Errorf("--%s default %s, want %s", name, got, want)
		}
	}
	if err := fs.Parse([]string{"--env", "prod", "--kv-bucket", "b", "--analytics-stream", "A", "--nats-replicas", "3",
		"--retry-every", "1s", "--retry-batch", "50", "--retry-max-backoff", "1m", "--nats-timeout", "4s"}); err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Env, want.NATS.Bucket, want.NATS.AnalyticsStream, want.NATS.Replicas = "prod", "b", "A", 3
	want.RetryEvery, want.RetryBatch, want.RetryMax, want.NATSTimeout = time.Second, 50, time.Minute, 4*time.Second
	if c != want {
		t.Errorf("flags set %+v, want %+v", c, want)
	}
}
