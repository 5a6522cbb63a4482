package publisher

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// NATSConfig names the NATS resources the publisher writes to.
type NATSConfig struct {
	// Bucket is the KV bucket of device states.
	Bucket string
	// AnalyticsStream captures the analytics and invalid subjects, so every
	// event is acknowledged and deduplicated by message id.
	AnalyticsStream string
	// DuplicateWindow is the analytics stream's message-id window; it spans
	// the publish retries so a retried event is not stored twice.
	DuplicateWindow time.Duration
	// MaxAge bounds how long events are kept.
	MaxAge   time.Duration
	Replicas int
}

// DefaultNATSConfig returns the names and limits used when none are given.
func DefaultNATSConfig() NATSConfig {
	return NATSConfig{
		Bucket:          "device-states",
		AnalyticsStream: "TELEMESH_ANALYTICS",
		DuplicateWindow: time.Hour,
		MaxAge:          7 * 24 * time.Hour,
		Replicas:        1,
	}
}

// Setup opens the device-states bucket, creating it if it does not exist,
// and creates or updates the analytics stream. A bucket deleted while the
// publisher runs is not made again behind the operator's back: publishes
// fail with the reason until it is back.
func Setup(ctx context.Context, js jetstream.JetStream, cfg NATSConfig) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "latest telemetry values per device, written by telemesh",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", cfg.Bucket, err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        cfg.AnalyticsStream,
		Description: "telemesh analytics and invalid-telemetry events",
		Subjects:    []string{"iot.v1.analytics.>", "iot.v1.invalid.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      cfg.MaxAge,
		Duplicates:  cfg.DuplicateWindow,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("analytics stream %s: %w", cfg.AnalyticsStream, err)
	}
	return kv, nil
}
