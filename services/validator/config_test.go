package validator

import (
	"errors"
	"testing"

	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
)

func TestConfigValidate(t *testing.T) {
	tests := map[string]struct {
		change func(*Config)
		flag   string
	}{
		"default":         {func(*Config) {}, ""},
		"smallest limits": {func(c *Config) { c.Limits = Limits{MaxBytes: 1, MaxKeys: 1, MaxDepth: 1} }, ""},
		"no bytes":        {func(c *Config) { c.Limits.MaxBytes = 0 }, "max-payload-bytes"},
		"no keys":         {func(c *Config) { c.Limits.MaxKeys = 0 }, "max-payload-keys"},
		"negative depth":  {func(c *Config) { c.Limits.MaxDepth = -1 }, "max-payload-depth"},
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
	fs := pflag.NewFlagSet("validator", pflag.ContinueOnError)
	c.RegisterFlags(fs)
	for name, want := range map[string]string{"max-payload-bytes": "262144", "max-payload-keys": "1000", "max-payload-depth": "32"} {
		if got := fs.Lookup(name).DefValue; got != want {
			t.Errorf("--%s default %s, want %s", name, got, want)
		}
	}
	if err := fs.Parse([]string{"--max-payload-bytes", "100", "--max-payload-keys", "10", "--max-payload-depth", "3"}); err != nil {
		t.Fatal(err)
	}
	if want := (Limits{MaxBytes: 100, MaxKeys: 10, MaxDepth: 3}); c.Limits != want {
		t.Errorf("flags set %+v, want %+v", c.Limits, want)
	}
}
