package app

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sethvargo/go-retry"

	"github.com/telemesh/telemesh/gateway"
	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/process"
	"github.com/telemesh/telemesh/services/deriver"
	"github.com/telemesh/telemesh/services/persister"
	"github.com/telemesh/telemesh/services/publisher"
	"github.com/telemesh/telemesh/services/validator"
)

// build constructs the stage named by o.Stage.
func build(ctx context.Context, o Options, d *deps) (*builtStage, error) {
	switch o.Stage {
	case Gateway:
		js, err := jetstream.New(d.nc)
		if err != nil {
			return nil, err
		}
		gwCfg := o.Gateway
		gwCfg.StoredPayloadBytes = o.Process.StoredPayloadBytes
		g := gateway.New(gwCfg, js, validatorv1.NewValidatorServiceClient(d.conns[Validator]), d.catalog, d.pool, d.logs, gateway.NewMetrics(d.reg), d.logger).WithTracing(d.tracing)
		if err := d.reg.Register(g.ConsumerCollector()); err != nil {
			return nil, err
		}
		run := func(ctx context.Context) error {
			// NATS may come up after the gateway: keep trying.
			err := retry.Do(ctx, startBackoff(), func(ctx context.Context) error {
				if err := g.Setup(ctx); err != nil {
					d.logger.Warn("stream setup failed; retrying", "err", err)
					return retry.RetryableError(err)
				}
				return nil
			})
			if err != nil {
				// Every failure is retried: only the end of ctx stops it.
				return nil
			}
			return g.Run(ctx)
		}
		return &builtStage{handler: g, workers: []process.Worker{
			{Name: "consumer", Run: run},
			{Name: "resume-parked", Run: g.ResumeParked},
		}}, nil
	case Validator:
		v := validator.New(validator.NewChecker(o.Validator.Limits), d.catalog, d.pool,
			deriverv1.NewDeriverServiceClient(d.conns[Deriver]),
			persisterv1.NewPersisterServiceClient(d.conns[Persister]), d.logs, d.logger).WithTracing(d.tracing)
		return &builtStage{handler: v}, nil
	case Deriver:
		return &builtStage{handler: deriver.New(d.catalog, persisterv1.NewPersisterServiceClient(d.conns[Persister]), d.logs, d.logger).WithTracing(d.tracing)}, nil
	case Persister:
		store := persister.NewStore(d.pool, o.Persister.PublishLease).WithStoredPayloadLimit(o.Process.StoredPayloadBytes)
		srv, err := persister.New(o.Persister, store, d.logs, publisherv1.NewPublisherServiceClient(d.conns[Publisher]), d.logger).WithTracing(d.tracing).WithMetrics(d.reg)
		if err != nil {
			return nil, err
		}
		return &builtStage{handler: srv}, nil
	case Publisher:
		js, err := jetstream.New(d.nc)
		if err != nil {
			return nil, err
		}
		setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var last error
		kv, err := retry.DoValue(setupCtx, startBackoff(), func(ctx context.Context) (jetstream.KeyValue, error) {
			kv, err := publisher.Setup(ctx, js, o.Publisher.NATS)
			if err != nil {
				last = err
				d.logger.Warn("NATS setup failed; retrying", "err", err)
				return nil, retry.RetryableError(err)
			}
			return kv, nil
		})
		if err != nil {
			// The deadline ended it: name what kept failing.
			return nil, fmt.Errorf("NATS setup: %w", cmp.Or(last, err))
		}
		pub := publisher.NewEmitter(js, kv, o.Publisher.NATS, o.Publisher.Env, d.catalog.Switches, o.Publisher.NATSTimeout, d.logger)
		srv, err := publisher.New(o.Publisher, pub, d.pool, d.catalog, d.logs, d.logger).WithTracing(d.tracing).WithMetrics(d.reg)
		if err != nil {
			return nil, err
		}
		return &builtStage{handler: srv, workers: []process.Worker{{Name: "publish-retry", Run: srv.RetryLoop}}}, nil
	}
	return nil, fmt.Errorf("unknown stage %q", o.Stage)
}

// startBackoff paces a stage's start-up retries against a dependency that
// is not there yet (Postgres, NATS): quickly at first, so a mesh started all
// at once comes up fast, then every few seconds; jittered, so replicas
// started together do not knock in step.
func startBackoff() retry.Backoff {
	return retry.WithJitterPercent(startJitterPercent,
		retry.WithCappedDuration(startBackoffMax, retry.NewExponential(startBackoffBase)))
}

// The start-up retries: the first wait, the longest, and the jitter (±%).
const (
	startBackoffBase   = 250 * time.Millisecond
	startBackoffMax    = 5 * time.Second
	startJitterPercent = 20
)
