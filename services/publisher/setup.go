package publisher

import (
	"context"
	"errors"
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

// BucketConfig is the device-states bucket as the publisher makes it: one
// value per device, file storage, cfg.Replicas replicas. [Setup] and
// [EnsureBucket] both create it from here, so a bucket made again is the
// bucket the publisher would have made.
func BucketConfig(cfg NATSConfig) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "latest telemetry values per device, written by telemesh",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	}
}

// RebuildCommand is the operator command that makes the bucket of cfg
// again, if it is missing, and refills it from Postgres; logs and doctor
// name it.
func RebuildCommand(cfg NATSConfig) string {
	return fmt.Sprintf("telemesh replay kv-rebuild --kv-bucket %s --nats-replicas %d", cfg.Bucket, cfg.Replicas)
}

// Setup opens the device-states bucket, creating it if it does not exist,
// and creates or updates the analytics stream.
//
// A bucket deleted while the publisher runs is not made again behind the
// operator's back: an empty bucket would look healthy while every device
// that has not published since is missing from it, and an operator who
// deleted it to make it again with other settings would race the
// publisher. Publishes fail with a reason that names the bucket, the
// publisher warns once, and [RebuildCommand] makes it again and refills it.
func Setup(ctx context.Context, js jetstream.JetStream, cfg NATSConfig) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, BucketConfig(cfg))
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

// EnsureBucket opens the bucket of cfg, creating it from [BucketConfig] if it
// does not exist, and reports whether it created it. An existing bucket is
// left as it is.
func EnsureBucket(ctx context.Context, js jetstream.JetStream, cfg NATSConfig) (jetstream.KeyValue, bool, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if err == nil {
		return kv, false, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, false, (&diagnosis{js: js, bucket: cfg.Bucket}).bucketError(ctx, err)
	}
	kv, err = js.CreateKeyValue(ctx, BucketConfig(cfg))
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Made meanwhile, by a publisher starting or another rebuild.
		kv, err = js.KeyValue(ctx, cfg.Bucket)
		if err == nil {
			return kv, false, nil
		}
	}
	if err != nil {
		return nil, false, fmt.Errorf("create %s %q: %s", KindBucket, cfg.Bucket, natsMessage(err))
	}
	return kv, true, nil
}
