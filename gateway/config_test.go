package gateway

import (
	"errors"
	"reflect"
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
		"default":                     {func(*Config) {}, ""},
		"ack wait shorter than calls": {func(c *Config) { c.AckWait, c.CallTimeout = time.Second, time.Minute }, ""},
		"max ack pending of a batch":  {func(c *Config) { c.BatchSize, c.MaxAckPending = 100, 100 }, ""},
		"five stream replicas":        {func(c *Config) { c.Replicas = 5 }, ""},
		"no subjects":                 {func(c *Config) { c.Subjects = nil }, "subjects"},
		"empty batch":                 {func(c *Config) { c.BatchSize = 0 }, "batch-size"},
		"batch too large":             {func(c *Config) { c.BatchSize = 10001 }, "batch-size"},
		"batch age zero":              {func(c *Config) { c.BatchAge = 0 }, "batch-age"},
		"no concurrency":              {func(c *Config) { c.Concurrency = 0 }, "concurrency"},
		"one delivery":                {func(c *Config) { c.MaxDeliver = 1 }, "max-deliver"},
		"ack wait too short":          {func(c *Config) { c.AckWait = 100 * time.Millisecond }, "ack-wait"},
		"call timeout zero":           {func(c *Config) { c.CallTimeout = 0 }, "call-timeout"},
		"negative max ack pending":    {func(c *Config) { c.MaxAckPending = -1 }, "max-ack-pending"},
		"less than a batch pending":   {func(c *Config) { c.BatchSize, c.MaxAckPending = 100, 99 }, "max-ack-pending"},
		"no stream replicas":          {func(c *Config) { c.Replicas = 0 }, "stream-replicas"},
		"six stream replicas":         {func(c *Config) { c.Replicas = 6 }, "stream-replicas"},
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
			if err == nil {
				t.Fatalf("accepted; want --%s refused", tc.flag)
			}
			var inv *config.Error
			if !errors.As(err, &inv) || inv.Flag != tc.flag {
				t.Errorf("want --%s named: %v", tc.flag, err)
			}
		})
	}
}

// TestConfigFlags: the flags start at the defaults and set the fields.
func TestConfigFlags(t *testing.T) {
	c := DefaultConfig()
	fs := pflag.NewFlagSet("gateway", pflag.ContinueOnError)
	c.RegisterFlags(fs)
	fs.VisitAll(func(f *pflag.Flag) {
		if f.DefValue != f.Value.String() {
			t.Errorf("--%s shows default %q but holds %q", f.Name, f.DefValue, f.Value.String())
		}
	})
	if got := fs.Lookup("subjects").DefValue; got != "devices.>" {
		t.Errorf("--subjects default %q, want devices.>", got)
	}
	if err := fs.Parse([]string{"--subjects", "a.>, b.>", "--stream", "S", "--consumer", "C", "--stream-replicas", "3",
		"--stream-max-age", "1h", "--stream-duplicates", "1m", "--ack-wait", "9s", "--max-deliver", "4", "--max-ack-pending", "900",
		"--batch-size", "9", "--batch-age", "7ms", "--concurrency", "2", "--call-timeout", "3s"}); err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Subjects, want.Stream, want.Consumer, want.Replicas = []string{"a.>", "b.>"}, "S", "C", 3
	want.MaxAge, want.Duplicates, want.AckWait, want.MaxDeliver, want.MaxAckPending = time.Hour, time.Minute, 9*time.Second, 4, 900
	want.BatchSize, want.BatchAge, want.Concurrency, want.CallTimeout = 9, 7*time.Millisecond, 2, 3*time.Second
	if !reflect.DeepEqual(c, want) {
		t.Errorf("flags set\n %+v\nwant\n %+v", c, want)
	}
}
