package ops

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/value"
	"github.com/telemesh/telemesh/services/publisher"
)

// interleaved is the real bucket with another writer's write run once,
// just before the first compare-and-set write goes out: the publisher
// getting there between the rebuild's read of an entry and its write.
type interleaved struct {
	jetstream.KeyValue
	once   sync.Once
	before func()
}

func (k *interleaved) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	k.once.Do(k.before)
	return k.KeyValue.Create(ctx, key, value, opts...)
}

func (k *interleaved) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	k.once.Do(k.before)
	return k.KeyValue.Update(ctx, key, value, revision)
}

// entry reads and decodes a device's entry, failing the test if it has none.
func entry(t *testing.T, kv jetstream.KeyValue, device uuid.UUID) (publisher.DeviceState, uint64) {
	t.Helper()
	e, err := kv.Get(t.Context(), device.String())
	if err != nil {
		t.Fatalf("entry of %s: %v", device, err)
	}
	var s publisher.DeviceState
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		t.Fatalf("entry of %s: %v", device, err)
	}
	return s, e.Revision()
}

func TestRebuildKV(t *testing.T) {
	db := testdb.New(t)
	f := fixture{t, db.Pool}
	ns := testnats.New(t)
	_, js := ns.Connect(t)
	ctx := t.Context()
	acme, globex := f.org("acme"), f.org("globex")
	d1, d2, g1, gone := f.device(acme, "d1"), f.device(acme, "d2"), f.device(globex, "g1"), f.device(acme, "gone")
	f.exec(`update devices set deleted_at = now() where id = $1`, gone)

	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	row := func(org, dev uuid.UUID, topic, state string, recorded time.Time, values string) uuid.UUID {
		t.Helper()
		id := uuid.Must(uuid.NewV7())
		f.message(msg{id: id, org: org, device: dev, status: "completed", received: recorded})
		f.telemetry(id, org, dev, state, recorded)
		f.exec(`update device_telemetry_logs set topic = $2, transformed_values = $3 where id = $1`, id, topic, values)
		return id
	}
	row(acme, d1, "telemetry", "processed", t0, `{"t": 20}`)
	d1Latest := row(acme, d1, "telemetry", "processed", t0.Add(time.Minute), `{"t": 21.5, "f": 70.7}`)
	row(acme, d1, "telemetry", "publish_failed", t0.Add(2*time.Minute), `{"t": 99}`)
	row(acme, d1, "telemetry", "invalid", t0.Add(3*time.Minute), `{"t": 999}`)
	d1Status := row(acme, d1, "status", "processed", t0, `{"battery": 80}`)
	d2Quiet := row(acme, d2, "telemetry", "processed", t0.Add(-24*time.Hour), `{"t": 5}`)
	g1Row := row(globex, g1, "telemetry", "processed", t0, `{"t": 1}`)
	row(acme, gone, "telemetry", "processed", t0, `{"t": 7}`)

	t.Run("counts", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			filter Filter
			want   KVStates
		}{
			{"everything", Filter{}, KVStates{Devices: 3, Topics: 4}},
			{"organization", Filter{Organization: "acme"}, KVStates{Devices: 2, Topics: 3}},
			{"device", Filter{Device: "g1"}, KVStates{Devices: 1, Topics: 1}},
		} {
			got, err := CountKVStates(ctx, db.Pool, tc.filter)
			if err != nil || got != tc.want {
				t.Errorf("%s: %+v, %v; want %+v", tc.name, got, err, tc.want)
			}
		}
		if _, err := CountKVStates(ctx, db.Pool, Filter{Since: t0}); !errors.Is(err, ErrTimeWindow) {
			t.Errorf("with --since: %v, want ErrTimeWindow", err)
		}
		if _, err := LatestProcessed(ctx, db.Pool, Filter{Device: "nope"}); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown device: %v, want ErrNotFound", err)
		}
	})

	cfg := publisher.DefaultNATSConfig()
	kv, created, err := publisher.EnsureBucket(ctx, js, cfg)
	if err != nil || !created {
		t.Fatalf("ensure bucket: created %v, %v", created, err)
	}
	store := publisher.NewStateStore(js, kv, cfg.AnalyticsStream, 10*time.Second)

	t.Run("restores the latest processed state of quiet devices", func(t *testing.T) {
		items, err := LatestProcessed(ctx, db.Pool, Filter{Organization: "acme"})
		if err != nil {
			t.Fatal(err)
		}
		done, err := RebuildKV(ctx, store, items)
		if err != nil || done != (KVRebuild{Written: 2}) {
			t.Fatalf("rebuild: %+v, %v; want 2 written", done, err)
		}
		s, _ := entry(t, kv, d1)
		tel, stat := s.Topics["telemetry"], s.Topics["status"]
		if s.DeviceUUID != d1.String() || s.Organization != "acme" || len(s.Topics) != 2 ||
			tel.MessageID != d1Latest.String() || !tel.RecordedAt.Equal(t0.Add(time.Minute)) || tel.Value("t") != 21.5 ||
			stat.MessageID != d1Status.String() || stat.Value("battery") != 80.0 {
			t.Errorf("d1: %+v, want its latest processed row of each topic", s)
		}
		if s, _ := entry(t, kv, d2); s.Topics["telemetry"].MessageID != d2Quiet.String() {
			t.Errorf("quiet d2: %+v, want its day-old row", s)
		}
		for _, d := range []uuid.UUID{g1, gone} {
			if _, err := kv.Get(ctx, d.String()); !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Errorf("%s written: %v", d, err)
			}
		}
		// Again: every entry already holds these rows.
		if done, err := RebuildKV(ctx, store, items); err != nil || done != (KVRebuild{Kept: 2}) {
			t.Errorf("second rebuild: %+v, %v; want 2 kept", done, err)
		}
	})

	// pub is the publisher itself, writing to the same bucket.
	logger := slog.New(slog.DiscardHandler)
	pub := publisher.NewEmitter(js, kv, cfg, "test", catalog.NewCache(db.Pool, logger, 0).Switches, 10*time.Second, logger)
	publish := func(t *testing.T, dev uuid.UUID, topic string, recorded time.Time, v float64) uuid.UUID {
		t.Helper()
		id := uuid.Must(uuid.NewV7())
		// The analytics stream does not exist here: only the state write
		// matters, and it comes first.
		pub.Publish(ctx, []publisher.Item{{MessageID: id, OrganizationID: globex, OrganizationSlug: "globex", DeviceUUID: dev.String(),
			Topic: topic, RecordedAt: recorded, Values: json.RawMessage(value.Object(map[string]any{"t": v}))}}, false)
		return id
	}
	items, err := LatestProcessed(ctx, db.Pool, Filter{Device: "g1"})
	if err != nil || len(items) != 1 || items[0].MessageID != g1Row {
		t.Fatalf("g1's latest: %+v, %v", items, err)
	}

	t.Run("the publisher writes a newer message between read and write", func(t *testing.T) {
		var newer uuid.UUID
		racing := publisher.NewStateStore(js, &interleaved{KeyValue: kv, before: func() {
			newer = publish(t, g1, "telemetry", t0.Add(time.Hour), 2)
		}}, cfg.AnalyticsStream, 10*time.Second)
		done, err := RebuildKV(ctx, racing, items)
		if err != nil || done != (KVRebuild{Kept: 1}) {
			t.Fatalf("rebuild: %+v, %v; want 1 kept", done, err)
		}
		if s, _ := entry(t, kv, g1); s.Topics["telemetry"].MessageID != newer.String() || s.Topics["telemetry"].Value("t") != 2.0 {
			t.Errorf("g1: %+v, want the publisher's newer message %s", s, newer)
		}
	})

	t.Run("a conflict on another topic is merged", func(t *testing.T) {
		if err := kv.Purge(ctx, g1.String()); err != nil {
			t.Fatal(err)
		}
		var other uuid.UUID
		racing := publisher.NewStateStore(js, &interleaved{KeyValue: kv, before: func() {
			other = publish(t, g1, "status", t0.Add(time.Hour), 3)
		}}, cfg.AnalyticsStream, 10*time.Second)
		done, err := RebuildKV(ctx, racing, items)
		if err != nil || done != (KVRebuild{Written: 1}) {
			t.Fatalf("rebuild: %+v, %v; want 1 written after the retry", done, err)
		}
		s, _ := entry(t, kv, g1)
		if s.Topics["telemetry"].MessageID != g1Row.String() || s.Topics["status"].MessageID != other.String() {
			t.Errorf("g1: %+v, want the rebuilt telemetry and the publisher's status", s)
		}
	})

	t.Run("a newer entry is never replaced", func(t *testing.T) {
		_, before := entry(t, kv, g1)
		done, err := RebuildKV(ctx, store, items)
		if err != nil || done != (KVRebuild{Kept: 1}) {
			t.Fatalf("rebuild: %+v, %v; want 1 kept", done, err)
		}
		if _, after := entry(t, kv, g1); after != before {
			t.Errorf("g1 rewritten: revision %d -> %d", before, after)
		}
	})

	t.Run("a missing bucket is named", func(t *testing.T) {
		if err := js.DeleteKeyValue(ctx, cfg.Bucket); err != nil {
			t.Fatal(err)
		}
		_, err := RebuildKV(ctx, store, items)
		if err == nil || err.Error() != `device `+g1.String()+`, after 0 of 1: KV bucket "device-states" does not exist` {
			t.Errorf("rebuild into a deleted bucket: %v", err)
		}
	})
}
