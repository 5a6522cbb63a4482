package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/buildinfo"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/tracing"
)

// stagePorts are each stage's default gRPC and admin ports.
var stagePorts = map[string][2]string{
	app.Gateway:   {"7070", "9070"},
	app.Validator: {"7071", "9071"},
	app.Deriver:   {"7072", "9072"},
	app.Persister: {"7073", "9073"},
	app.Publisher: {"7074", "9074"},
}

var stageShort = map[string]string{
	app.Gateway:   "Consume telemetry from NATS JetStream and send it down the chain",
	app.Validator: "Validate payloads and forward them to the deriver",
	app.Deriver:   "Apply mutations and derived parameters",
	app.Persister: "Write telemetry rows to Postgres, then call the publisher",
	app.Publisher: "Publish device state to NATS KV and analytics subjects",
}

func newServeCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve <stage>",
		Short: "Serve one stage of the pipeline (gateway, validator, deriver, persister or publisher), or the viewer",
	}
	for _, stage := range app.Stages {
		cmd.AddCommand(newStageCmd(e, stage))
	}
	cmd.AddCommand(newViewerCmd(e))
	return cmd
}

func addNATSFlags(fs *pflag.FlagSet, s *app.NATS) {
	fs.StringVar(&s.URL, "nats-url", s.URL, "NATS server URL(s), comma-separated")
	fs.StringVar(&s.Auth.User, "nats-user", "", "NATS user name")
	fs.StringVar(&s.Auth.Password, "nats-password", "", "NATS password")
	fs.StringVar(&s.Auth.Token, "nats-token", "", "NATS token")
	fs.StringVar(&s.Auth.NKeyFile, "nats-nkey-file", "", "NATS NKey seed file")
	fs.StringVar(&s.Auth.CredsFile, "nats-creds-file", "", "NATS credentials (JWT) file")
	config.MarkSecret(fs, "nats-url", "nats-password", "nats-token")
}

func newStageCmd(e env, stage string) *cobra.Command {
	o := app.DefaultOptions(stage)
	o.Build = buildinfo.Read(version, commit, date)
	cmd := &cobra.Command{
		Use:   stage,
		Short: stageShort[stage],
		Args:  cobra.NoArgs,
	}
	fs := cmd.Flags()
	ports := stagePorts[stage]
	addProcessFlags(fs, &o.Process, ports[0], ports[1])
	if app.UsesNATS(stage) {
		addNATSFlags(fs, &o.NATS)
	}
	hopAddrs := map[string]*string{}
	for _, next := range app.NextHops[stage] {
		usage := next + " target: host:port, dns:///host:port, or a comma-separated list of replicas"
		hopAddrs[next] = fs.String(next+"-addr", "127.0.0.1:"+stagePorts[next][0], usage)
	}
	check := addStageFlags(fs, &o)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
			return err
		}
		if err := o.Process.Validate(); err != nil {
			return err
		}
		if err := o.CheckIdentity(); err != nil {
			return err
		}
		for next, addr := range hopAddrs {
			if err := config.CheckTarget(next+"-addr", *addr); err != nil {
				return err
			}
			o.Hops[next] = *addr
		}
		if err := check(); err != nil {
			return err
		}
		traces, err := tracing.ConfigFromEnv(e.lookupEnv)
		if err != nil {
			return fmt.Errorf("%w: %w", config.ErrInvalid, err)
		}
		o.Process.Tracing = traces
		logger, err := logging.New(e.stderr, o.Process.LogFormat, o.Process.LogLevel)
		if err != nil {
			return config.Invalid("log-format", "%v", err)
		}
		logger = logger.With("stage", stage)
		config.Print(logger, "configuration", fs)
		return app.Serve(cmd.Context(), o, logger)
	}
	return cmd
}

// addStageFlags registers the settings of one stage and returns their check.
func addStageFlags(fs *pflag.FlagSet, o *app.Options) func() error {
	switch o.Stage {
	case app.Gateway:
		gw := &o.Gateway
		subjects := fs.String("subjects", strings.Join(gw.Subjects, ","), "subjects the stream captures, comma-separated")
		fs.StringVar(&gw.Stream, "stream", gw.Stream, "JetStream stream that captures device telemetry")
		fs.StringVar(&gw.Consumer, "consumer", gw.Consumer, "durable pull consumer shared by every gateway replica")
		fs.IntVar(&gw.Replicas, "stream-replicas", gw.Replicas, "stream replicas (3 in production)")
		fs.DurationVar(&gw.MaxAge, "stream-max-age", gw.MaxAge, "how long the stream keeps messages")
		fs.DurationVar(&gw.Duplicates, "stream-duplicates", gw.Duplicates, "the stream's Nats-Msg-Id duplicate window")
		fs.DurationVar(&gw.AckWait, "ack-wait", gw.AckWait, "redelivery after this long without an ack or a sign of progress (batches in flight signal it every third of this)")
		fs.IntVar(&gw.MaxDeliver, "max-deliver", gw.MaxDeliver, "deliveries before a message is dead-lettered")
		fs.IntVar(&gw.MaxAckPending, "max-ack-pending", gw.MaxAckPending, "messages delivered and not yet acknowledged, over every replica (0: --batch-size x --concurrency)")
		fs.IntVar(&gw.BatchSize, "batch-size", gw.BatchSize, "messages per batch")
		fs.DurationVar(&gw.BatchAge, "batch-age", gw.BatchAge, "a batch closes after this long even when not full")
		fs.IntVar(&gw.Concurrency, "concurrency", gw.Concurrency, "batches in flight")
		fs.DurationVar(&gw.CallTimeout, "call-timeout", gw.CallTimeout, "bound of one batch's trip down the chain")
		return func() error {
			gw.Subjects = splitList(*subjects)
			return gw.Validate()
		}
	case app.Validator:
		l := &o.Limits
		fs.IntVar(&l.MaxBytes, "max-payload-bytes", l.MaxBytes, "largest payload accepted")
		fs.IntVar(&l.MaxKeys, "max-payload-keys", l.MaxKeys, "most keys in one payload, counted over the whole document")
		fs.IntVar(&l.MaxDepth, "max-payload-depth", l.MaxDepth, "deepest nesting of one payload")
		return func() error {
			switch {
			case l.MaxBytes < 1:
				return config.Invalid("max-payload-bytes", "must be positive")
			case l.MaxKeys < 1:
				return config.Invalid("max-payload-keys", "must be positive")
			case l.MaxDepth < 1:
				return config.Invalid("max-payload-depth", "must be positive")
			}
			return nil
		}
	case app.Persister:
		p := &o.Persister
		fs.DurationVar(&p.PublishTimeout, "publish-timeout", p.PublishTimeout, "bound of the call to the publisher; past it rows are publish_failed and retried")
		fs.DurationVar(&p.PublishLease, "publish-lease", p.PublishLease, "how long the rows of a persister that stopped wait before the retry loop takes them (renewed while its publish is under way)")
		return func() error {
			if p.PublishTimeout <= 0 {
				return config.Invalid("publish-timeout", "must be positive")
			}
			if p.PublishLease < 300*time.Millisecond {
				return config.Invalid("publish-lease", "%s is too short: it is renewed every third of it while a publish is under way", p.PublishLease)
			}
			return nil
		}
	case app.Publisher:
		p, n := &o.Publisher, &o.PublisherNATS
		fs.StringVar(&o.Env, "env", o.Env, "environment token of the analytics subjects iot.v1.analytics.<env>...")
		fs.StringVar(&n.Bucket, "kv-bucket", n.Bucket, "KV bucket of device states")
		fs.StringVar(&n.AnalyticsStream, "analytics-stream", n.AnalyticsStream, "stream that captures analytics and invalid events")
		fs.IntVar(&n.Replicas, "nats-replicas", n.Replicas, "replicas of the bucket and the analytics stream (3 in production)")
		fs.DurationVar(&p.RetryEvery, "retry-every", p.RetryEvery, "how often publish_failed and stale pending rows are retried")
		fs.IntVar(&p.RetryBatch, "retry-batch", p.RetryBatch, "rows one retry round takes")
		fs.DurationVar(&p.RetryMax, "retry-max-backoff", p.RetryMax, "longest wait between publish retries of a row")
		fs.DurationVar(&p.NATSTimeout, "nats-timeout", p.NATSTimeout, "bound of a batch's device-state writes and of the wait for its events' acks; past it the rows are publish_failed and retried")
		return func() error {
			switch {
			case strings.TrimSpace(o.Env) == "":
				return config.Invalid("env", "must not be empty")
			case p.RetryEvery <= 0:
				return config.Invalid("retry-every", "must be positive")
			case p.RetryBatch < 1:
				return config.Invalid("retry-batch", "must be at least 1")
			case p.NATSTimeout <= 0:
				return config.Invalid("nats-timeout", "must be positive")
			case n.Replicas < 1 || n.Replicas > 5:
				return config.Invalid("nats-replicas", "%d is out of range 1..5", n.Replicas)
			}
			return nil
		}
	}
	return func() error { return nil }
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
