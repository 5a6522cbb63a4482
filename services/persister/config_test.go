package persister

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
		"default":              {func(*Config) {}, ""},
		"shortest lease":       {func(c *Config) { c.PublishLease = 300 * time.Millisecond }, ""},
		"no publish timeout":   {func(c *Config) { c.PublishTimeout = 0 }, "publish-timeout"},
		"lease too short":      {func(c *Config) { c.PublishLease = 299 * time.Millisecond }, "publish-lease"},
		"negative lease":       {func(c *Config) { c.PublishLease = -time.Second }, "publish-lease"},
		"negative publish cap": {func(c *Config) { c.PublishTimeout = -time.Second }, "publish-timeout"},
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
	fs := pflag.NewFlagSet("persister", pflag.ContinueOnError)
	c.RegisterFlags(fs)
	for name, want := range map[string]string{"publish-timeout": "5s", "publish-lease": "3s"} {
		if got := fs.Lookup(name).DefValue; got != want {
			t.Errorf("--%s default %s, want %s", name, got, want)
		}
	}
	if err := fs.Parse([]string{"--publish-timeout", "2s", "--publish-lease", "1s"}); err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.PublishTimeout, want.PublishLease = 2*time.Second, time.Second
	if c != want {
		t.Errorf("flags set %+v, want %+v", c, want)
	}
}
