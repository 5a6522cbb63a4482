package main

import (
	"fmt"
	"math"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/simulate"
)

func newSimulateCmd(e env) *cobra.Command {
	var (
		natsURL        string
		devices, count int
		rate           float64
		duration       time.Duration
		messageIDs     bool
		seed           int64
		faults         simulate.Faults
	)
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Publish telemetry for the demo fleet to NATS JetStream, with a chosen mix of faults",
		Long: `simulate publishes telemetry as the demo fleet's devices would, on
<base>.<external id>.<suffix>, at --rate messages per second (0 = as fast as
JetStream acks), until --count messages, --duration or Ctrl-C. A share of the
messages can be faulty: invalid (a critical parameter missing or out of range),
for an inactive device, a duplicate of an earlier message, on an unknown topic,
malformed JSON, or missing a derivation input.

With --message-ids every message carries its id as the Nats-Msg-Id header and
as the payload's message_id. JetStream itself drops a duplicate carrying the
header inside the stream's duplicate window (two minutes by default), so half
of the duplicates carry only the payload message_id and reach telemesh's own
dedupe. Without --message-ids no id is sent, and a duplicate is an identical
re-send that telemesh counts as a new message.

Progress goes to stderr; a summary of what was sent, by kind, to stdout.`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&natsURL, "nats-url", "nats://127.0.0.1:4222", "NATS URL to publish to (a running telemesh up gives it)")
	fs.IntVar(&devices, "devices", len(demo.Devices), "how many demo devices to use, in the demo fleet's order")
	fs.Float64Var(&rate, "rate", 10, "messages per second over all devices; 0 = as fast as possible")
	fs.DurationVar(&duration, "duration", 0, "stop after this long; 0 = no limit")
	fs.IntVar(&count, "count", 0, "stop after this many messages; 0 = no limit")
	fs.BoolVar(&messageIDs, "message-ids", true, "send a Nats-Msg-Id header and a payload message_id with every message")
	pcts := []struct {
		flag  string
		share *float64
		usage string
	}{
		{"invalid-pct", &faults.Invalid, "with a critical parameter missing or out of range"},
		{"inactive-pct", &faults.Inactive, "for an inactive device (thermo-03 in the demo fleet)"},
		{"duplicate-pct", &faults.DuplicateIDs, "re-sending an earlier valid message"},
		{"unknown-topic-pct", &faults.UnknownTopic, "on <base>.<external id>.nosuchtopic"},
		{"malformed-pct", &faults.MalformedJSON, "with truncated JSON"},
		{"missing-inputs-pct", &faults.MissingInputs, "without the optional input a derived value needs (humidity, current_a)"},
	}
	for _, p := range pcts {
		fs.Float64Var(p.share, p.flag, 0, "percentage of messages "+p.usage)
	}
	fs.Int64Var(&seed, "seed", 1, "seed of the message sequence; the same seed sends the same kinds, devices and values")
	config.MarkSecret(fs, "nats-url")
	addMeshFileFlag(fs)

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
			return err
		}
		if devices < 1 || devices > len(demo.Devices) {
			return config.Invalid("devices", "%d is out of range 1..%d", devices, len(demo.Devices))
		}
		if !(rate >= 0) || math.IsInf(rate, 1) {
			return config.Invalid("rate", "%v must be a number, 0 or more", rate)
		}
		if duration < 0 {
			return config.Invalid("duration", "%v must be 0 or more", duration)
		}
		if count < 0 {
			return config.Invalid("count", "%d must be 0 or more", count)
		}
		sum := 0.0
		for _, p := range pcts {
			// Written so that NaN fails too.
			if !(*p.share >= 0 && *p.share <= 100) {
				return config.Invalid(p.flag, "%v is out of range 0..100", *p.share)
			}
			// The slack keeps 33.3+33.3+33.4 from failing on rounding.
			if sum += *p.share; sum > 100+1e-9 {
				return config.Invalid(p.flag, "the fault percentages add up to %v by this one; at most 100", faults.Sum())
			}
		}
		cfg := simulate.Config{
			Devices: simulate.DemoDevices(devices), Rate: rate, Duration: duration, Count: count,
			MessageIDs: messageIDs, Faults: faults, Seed: seed,
		}
		if err := cfg.Validate(); err != nil {
			return config.Invalid("devices", "%v", err)
		}
		// A setting given wrong is named before the mesh file is looked for.
		if _, err := fromMesh(fs, e, "nats-url"); err != nil {
			return err
		}
		if natsURL == "" {
			return config.Invalid("nats-url", "required")
		}
		for _, n := range cfg.Notes() {
			fmt.Fprintf(e.stderr, "note: %s\n", n)
		}

		// No retry on the first connect: a wrong URL should fail now, not
		// as a run of unacknowledged messages.
		nc, err := nats.Connect(natsURL, nats.Name("telemesh-simulate"), nats.Timeout(5*time.Second))
		if err != nil {
			return fmt.Errorf("connect to NATS at %s: %w", config.MaskURL(natsURL), err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}

		fmt.Fprintf(e.stderr, "simulating %d devices on %s, seed %d; Ctrl-C stops\n", devices, config.MaskURL(natsURL), seed)
		progress := simulate.NewProgress(e.stderr, simulate.IsTerminal(e.stderr))
		stats, runErr := simulate.Run(cmd.Context(), js, cfg, progress.Update)
		// A run that failed before sending anything has nothing to sum up.
		if stats.Total() > 0 || runErr == nil {
			progress.Finish(stats)
			if err := simulate.WriteSummary(e.stdout, stats); err != nil {
				return err
			}
		}
		return runErr
	}
	return cmd
}
