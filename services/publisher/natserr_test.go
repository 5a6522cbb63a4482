package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/value"
)

// Each way a write to NATS fails is told in one line naming the bucket or
// the stream, from the errors nats.go really returns.
func TestResourceErrorReasons(t *testing.T) {
	ns := testnats.New(t)
	nc, js := ns.Connect(t)
	ctx := t.Context()
	cfg := DefaultNATSConfig()
	kv, err := Setup(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	store := NewStateStore(js, kv, cfg.AnalyticsStream, 10*time.Second)
	u := DeviceUpdate{Device: "0190a0b0-0000-7000-8000-000000000001", Organization: "acme",
		Topics: map[string]TopicState{"telemetry": {Values: json.RawMessage(value.Object(map[string]any{"t": 1.0})), MessageID: "m1", RecordedAt: time.Now().UTC()}}}
	event := func(subject string) error {
		f, err := js.PublishAsync(subject, []byte(`{}`))
		if err != nil {
			return err
		}
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return err
		case <-time.After(10 * time.Second):
			return context.DeadlineExceeded
		}
	}
	tests := []struct {
		name string
		// fail returns the error the write met, already described or not.
		fail func(d *diagnosis) error
		want string
		down bool
	}{
		{"timeout", func(d *diagnosis) error { return d.bucketError(ctx, context.DeadlineExceeded) },
			`KV bucket "device-states" did not answer within 10s`, false},
		{"compare-and-set exhausted", func(d *diagnosis) error { return d.bucketError(ctx, ErrCASExhausted) },
			`KV bucket "device-states": device state kept changing; compare-and-set attempts exhausted`, false},
		{"event subject not captured", func(d *diagnosis) error {
			subject := "iot.v1.analytics.test.acme.d1.telemetry"
			if _, err := js.UpdateStream(ctx, jetstream.StreamConfig{Name: cfg.AnalyticsStream, Subjects: []string{"iot.v1.invalid.>"},
				Storage: jetstream.FileStorage, Duplicates: cfg.DuplicateWindow, MaxAge: cfg.MaxAge}); err != nil {
				t.Fatal(err)
			}
			return d.streamError(ctx, subject, event(subject))
		}, `analytics stream "TELEMESH_ANALYTICS" does not capture the event's subject`, true},
		{"analytics stream deleted", func(d *diagnosis) error {
			subject := "iot.v1.analytics.test.acme.d1.telemetry"
			if err := js.DeleteStream(ctx, cfg.AnalyticsStream); err != nil {
				t.Fatal(err)
			}
			return d.streamError(ctx, subject, event(subject))
		}, `analytics stream "TELEMESH_ANALYTICS" does not exist`, true},
		{"bucket deleted", func(*diagnosis) error {
			if err := js.DeleteKeyValue(ctx, cfg.Bucket); err != nil {
				t.Fatal(err)
			}
			_, err := store.Write(ctx, u)
			return err
		}, `KV bucket "device-states" does not exist`, true},
		{"connection closed", func(*diagnosis) error {
			nc.Close()
			_, err := store.Write(ctx, u)
			return err
		}, `KV bucket "device-states" cannot be reached: the connection to NATS is down`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.fail(store.diagnosis())
			if err == nil || err.Error() != tt.want {
				t.Fatalf("reason %v, want %q", err, tt.want)
			}
			var re *ResourceError
			if !errors.As(err, &re) || re.Down() != tt.down {
				t.Errorf("%#v: Down() = %v, want %v", err, re != nil && re.Down(), tt.down)
			}
		})
	}
}
