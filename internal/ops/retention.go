package ops

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// MessageDeleteBatch is how many ingestion_messages rows Retain deletes per
// statement, so no one statement holds locks for long.
const MessageDeleteBatch = 10_000

// PartitionDaysAhead is how many days of partitions after today Retain
// makes sure exist.
const PartitionDaysAhead = 7

// ParseAge parses a retention age: a whole number of days ("90d") or a Go
// duration ("36h"). It must be positive.
func ParseAge(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return 0, fmt.Errorf("%q is not a number of days like 90d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q is not a number of days like 90d or a duration like 36h", s)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q is not positive", s)
	}
	return d, nil
}

// Retention is how long each table keeps its rows.
type Retention struct {
	Telemetry, Messages, StageLogs time.Duration
	// DryRun counts what would go and changes nothing.
	DryRun bool
	// Now is the time the ages count back from; zero means time.Now().
	Now time.Time
}

// TableResult is what Retain did to one partitioned table.
type TableResult struct {
	Table  string    `json:"table"`
	Cutoff time.Time `json:"cutoff"`
	// DroppedPartitions are the daily partitions dropped (or, in a dry run,
	// that would be).
	DroppedPartitions []string `json:"dropped_partitions"`
	// DefaultRowsDeleted are the rows older than Cutoff deleted from the
	// DEFAULT partition.
	DefaultRowsDeleted int64 `json:"default_rows_deleted"`
	// PartitionsCreated are the partitions made for the days ahead.
	PartitionsCreated int `json:"partitions_created"`
}

// RetentionResult is what Retain did.
type RetentionResult struct {
	DryRun          bool          `json:"dry_run"`
	Tables          []TableResult `json:"tables"`
	MessagesCutoff  time.Time     `json:"messages_cutoff"`
	MessagesDeleted int64         `json:"messages_deleted"`
}

// Retain drops the daily partitions of device_telemetry_logs and
// ingestion_stage_logs that lie wholly before their cutoffs, deletes older
// rows from their DEFAULT partitions, deletes old ingestion_messages in
// batches of MessageDeleteBatch, and makes sure the partitions for the next
// PartitionDaysAhead days exist. It is safe to run again at any time.
func Retain(ctx context.Context, pool *pgxpool.Pool, r Retention) (RetentionResult, error) {
	now := r.Now
	if now.IsZero() {
		now = time.Now()
	}
	now = now.UTC()
	res := RetentionResult{DryRun: r.DryRun}
	for _, t := range []struct {
		table, column string
		age           time.Duration
	}{
		{"device_telemetry_logs", "recorded_at", r.Telemetry},
		{"ingestion_stage_logs", "created_at", r.StageLogs},
	} {
		tr, err := retainTable(ctx, pool, t.table, t.column, now.Add(-t.age), now, r.DryRun)
		if err != nil {
			return res, err
		}
		res.Tables = append(res.Tables, tr)
	}

	res.MessagesCutoff = now.Add(-r.Messages)
	if r.DryRun {
		err := pool.QueryRow(ctx, `select count(*) from ingestion_messages where received_at < $1`, res.MessagesCutoff).
			Scan(&res.MessagesDeleted)
		if err != nil {
			return res, fmt.Errorf("count old ingestion_messages: %w", err)
		}
		return res, nil
	}
	for {
		tag, err := pool.Exec(ctx, `delete from ingestion_messages where id in (
			select id from ingestion_messages where received_at < $1 limit $2)`, res.MessagesCutoff, MessageDeleteBatch)
		if err != nil {
			return res, fmt.Errorf("delete old ingestion_messages: %w", err)
		}
		res.MessagesDeleted += tag.RowsAffected()
		if tag.RowsAffected() < MessageDeleteBatch {
			break
		}
	}
	return res, nil
}

// retainTable applies retention to one partitioned table.
func retainTable(ctx context.Context, pool *pgxpool.Pool, table, column string, cutoff, now time.Time, dryRun bool) (TableResult, error) {
	tr := TableResult{Table: table, Cutoff: cutoff, DroppedPartitions: []string{}}
	cutoffDay := time.Date(cutoff.Year(), cutoff.Month(), cutoff.Day(), 0, 0, 0, 0, time.UTC)
	old, err := partitionsBefore(ctx, pool, table, cutoffDay)
	if err != nil {
		return tr, err
	}
	tr.DroppedPartitions = append(tr.DroppedPartitions, old...)
	ident := pgx.Identifier{table + "_default"}.Sanitize()
	col := pgx.Identifier{column}.Sanitize()
	if dryRun {
		if err := pool.QueryRow(ctx, `select count(*) from `+ident+` where `+col+` < $1`, cutoff).Scan(&tr.DefaultRowsDeleted); err != nil {
			return tr, fmt.Errorf("count old rows of %s: %w", table+"_default", err)
		}
		return tr, nil
	}
	var dropped int
	if err := pool.QueryRow(ctx, `select telemesh_drop_partitions_before($1::text::regclass, $2::date)`, table, cutoffDay).Scan(&dropped); err != nil {
		return tr, fmt.Errorf("drop old partitions of %s: %w", table, err)
	}
	if dropped != len(old) {
		// Another run dropped some in between; report what is gone now.
		left, err := partitionsBefore(ctx, pool, table, cutoffDay)
		if err != nil {
			return tr, err
		}
		tr.DroppedPartitions = difference(old, left)
	}
	tag, err := pool.Exec(ctx, `delete from `+ident+` where `+col+` < $1`, cutoff)
	if err != nil {
		return tr, fmt.Errorf("delete old rows of %s: %w", table+"_default", err)
	}
	tr.DefaultRowsDeleted = tag.RowsAffected()
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	err = pool.QueryRow(ctx, `select telemesh_ensure_partitions($1::text::regclass, $2::date, $3::date)`,
		table, today, today.AddDate(0, 0, PartitionDaysAhead)).Scan(&tr.PartitionsCreated)
	if err != nil {
		return tr, fmt.Errorf("create partitions of %s: %w", table, err)
	}
	return tr, nil
}

// partitionDay matches the daily partitions' name suffix.
var partitionDay = regexp.MustCompile(`_p([0-9]{8})$`)

// partitionsBefore lists the daily partitions of table lying wholly before
// day, as telemesh_drop_partitions_before chooses them.
func partitionsBefore(ctx context.Context, pool *pgxpool.Pool, table string, day time.Time) ([]string, error) {
	rows, err := pool.Query(ctx, `select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
		where i.inhparent = $1::text::regclass`, table)
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", table, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", table, err)
	}
	var out []string
	for _, n := range names {
		m := partitionDay.FindStringSubmatch(n)
		if m == nil || n != table+"_p"+m[1] {
			continue
		}
		d, err := time.Parse("20060102", m[1])
		if err == nil && d.Before(day) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// difference returns the names in a that are not in b.
func difference(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, s := range b {
		in[s] = true
	}
	out := []string{}
	for _, s := range a {
		if !in[s] {
			out = append(out, s)
		}
	}
	return out
}
