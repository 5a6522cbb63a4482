package app

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/gateway"
	deriverv1 "github.com/telemesh/telemesh/gen/telemesh/deriver/v1"
	persisterv1 "github.com/telemesh/telemesh/gen/telemesh/persister/v1"
	publisherv1 "github.com/telemesh/telemesh/gen/telemesh/publisher/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/service"
	"github.com/telemesh/telemesh/services/deriver"
	"github.com/telemesh/telemesh/services/persister"
	"github.com/telemesh/telemesh/services/publisher"
	"github.com/telemesh/telemesh/services/validator"
)

// DefaultOptions returns the settings of a stage when none are given.
func DefaultOptions(stage string) Options {
	return Options{
		Stage:         stage,
		NATS:          NATS{URL: "nats://127.0.0.1:4222"},
		Hops:          map[string]string{},
		Gateway:       gateway.DefaultConfig(),
		Limits:        validator.DefaultLimits(),
		Persister:     persister.DefaultConfig(),
		Publisher:     publisher.DefaultConfig(),
		PublisherNATS: publisher.DefaultNATSConfig(),
		Env:           "local",
	}
}

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
		g := gateway.New(gwCfg, js, validatorv1.NewValidatorServiceClient(d.conns[Validator]), d.catalog, d.pool, d.logs, gateway.NewMetrics(d.reg), d.logger)
		run := func(ctx context.Context) error {
			// NATS may come up after the gateway: keep trying.
			for {
				err := g.Setup(ctx)
				if err == nil {
					break
				}
				d.logger.Warn("stream setup failed; retrying", "err", err)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(2 * time.Second):
				}
			}
			return g.Run(ctx)
		}
		return &builtStage{handler: g, workers: []service.Worker{
			{Name: "consumer", Run: run},
			{Name: "resume-parked", Run: g.ResumeParked},
		}}, nil
	case Validator:
		v := validator.New(validator.NewChecker(o.Limits), d.catalog, d.pool,
			deriverv1.NewDeriverServiceClient(d.conns[Deriver]),
			persisterv1.NewPersisterServiceClient(d.conns[Persister]), d.logs, d.logger)
		return &builtStage{handler: v}, nil
	case Deriver:
		return &builtStage{handler: deriver.New(d.catalog, persisterv1.NewPersisterServiceClient(d.conns[Persister]), d.logs, d.logger)}, nil
	case Persister:
		store := persister.NewStore(d.pool, o.Persister.PublishLease).WithStoredPayloadLimit(o.Process.StoredPayloadBytes)
		return &builtStage{handler: persister.New(o.Persister, store, d.logs, publisherv1.NewPublisherServiceClient(d.conns[Publisher]), d.logger)}, nil
	case Publisher:
		js, err := jetstream.New(d.nc)
		if err != nil {
			return nil, err
		}
		var kv jetstream.KeyValue
		setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		for {
			if kv, err = publisher.Setup(setupCtx, js, o.PublisherNATS); err == nil {
				break
			}
			d.logger.Warn("NATS setup failed; retrying", "err", err)
			select {
			case <-setupCtx.Done():
				return nil, fmt.Errorf("NATS setup: %w", err)
			case <-time.After(time.Second):
			}
		}
		pub := publisher.NewPublisher(js, kv, o.PublisherNATS, o.Env, d.catalog.Switches, o.Publisher.NATSTimeout, d.logger)
		srv := publisher.New(o.Publisher, pub, d.pool, d.catalog, d.logs, d.logger)
		return &builtStage{handler: srv, workers: []service.Worker{{Name: "publish-retry", Run: srv.RetryLoop}}}, nil
	}
	return nil, fmt.Errorf("unknown stage %q", o.Stage)
}
