package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/services/publisher"
)

// ErrTimeWindow is a --since or --until given to the rebuild of the KV
// bucket: the bucket holds each device's latest state, whenever it was
// received.
var ErrTimeWindow = errors.New("a time window does not apply: the bucket holds each device's latest state")

// KVStates is how many device states a rebuild of the KV bucket writes from.
type KVStates struct {
	// Devices have at least one processed telemetry row.
	Devices int64 `json:"devices"`
	// Topics counts the pairs of device and topic with a processed row; each
	// contributes its latest row to its device's entry.
	Topics int64 `json:"topics"`
}

// latestWhere matches the telemetry rows a rebuild reads from: processed
// rows of devices that are not soft-deleted, filtered from $1 on.
var latestWhere = `t.processing_state = 'processed' and d.deleted_at is null and ` + filterSQL("t", 1)

// CountKVStates counts the devices and topics matching f whose latest state
// a rebuild of the KV bucket would write. f must not bound a time window.
func CountKVStates(ctx context.Context, pool *pgxpool.Pool, f Filter) (KVStates, error) {
	r, err := kvFilter(ctx, pool, f)
	if err != nil {
		return KVStates{}, err
	}
	var n KVStates
	err = pool.QueryRow(ctx, `select count(distinct device_id), count(*) from (
			select distinct t.device_id, t.topic
			from device_telemetry_logs t join devices d on d.id = t.device_id
			where `+latestWhere+`) s`, r.args()...).Scan(&n.Devices, &n.Topics)
	if err != nil {
		return KVStates{}, fmt.Errorf("count processed device states: %w", err)
	}
	return n, nil
}

// LatestProcessed returns, for each device and topic matching f, its latest
// processed telemetry row (latest recorded_at, then the greater id, as the
// publisher orders messages) as the item the publisher publishes for it.
// f must not bound a time window.
func LatestProcessed(ctx context.Context, pool *pgxpool.Pool, f Filter) ([]publisher.Item, error) {
	r, err := kvFilter(ctx, pool, f)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `select distinct on (t.device_id, t.topic)
			t.id, t.recorded_at, t.organization_id, coalesce(o.slug, ''), t.device_id, d.external_id, t.topic,
			coalesce(t.transformed_values, '{}')
		from device_telemetry_logs t
		join devices d on d.id = t.device_id
		left join organizations o on o.id = t.organization_id
		where `+latestWhere+`
		order by t.device_id, t.topic, t.recorded_at desc, t.id desc`, r.args()...)
	if err != nil {
		return nil, fmt.Errorf("read latest processed rows: %w", err)
	}
	items, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (publisher.Item, error) {
		var (
			it     publisher.Item
			org    *uuid.UUID
			device uuid.UUID
			values []byte
		)
		if err := row.Scan(&it.MessageID, &it.RecordedAt, &org, &it.OrganizationSlug, &device, &it.DeviceExternalID,
			&it.Topic, &values); err != nil {
			return it, err
		}
		if org != nil {
			it.OrganizationID = *org
		}
		it.DeviceUUID = device.String()
		if err := json.Unmarshal(values, &it.Values); err != nil {
			return it, fmt.Errorf("row %s: transformed_values: %w", it.MessageID, err)
		}
		return it, nil
	})
	if err != nil {
		return nil, fmt.Errorf("read latest processed rows: %w", err)
	}
	return items, nil
}

// KVRebuild is what a rebuild of the KV bucket did.
type KVRebuild struct {
	// Written counts the device entries written.
	Written int `json:"written"`
	// Kept counts the entries that already held every topic as new or
	// newer, written meanwhile by the publisher, and were left alone.
	Kept int `json:"kept"`
}

// RebuildKV writes items, the latest rows of [LatestProcessed], into the
// bucket through store: the state the publisher would write, merged into
// each device's entry with the publisher's compare-and-set, so an entry
// the publisher wrote meanwhile from a newer message is never replaced by
// an older one. It stops at the first device it cannot write, returning
// what it did so far.
func RebuildKV(ctx context.Context, store *publisher.StateStore, items []publisher.Item) (KVRebuild, error) {
	var done KVRebuild
	updates := publisher.DeviceUpdates(items)
	for i, u := range updates {
		wrote, err := store.Write(ctx, u)
		if err != nil {
			return done, fmt.Errorf("device %s, after %d of %d: %w", u.Device, i, len(updates), err)
		}
		if wrote {
			done.Written++
		} else {
			done.Kept++
		}
	}
	return done, nil
}

// kvFilter resolves f, which must not bound a time window.
func kvFilter(ctx context.Context, pool *pgxpool.Pool, f Filter) (resolved, error) {
	if !f.Since.IsZero() || !f.Until.IsZero() {
		return resolved{}, ErrTimeWindow
	}
	return f.resolve(ctx, pool)
}
