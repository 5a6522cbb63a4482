package faults_test

import (
	"context"
	"fmt"
	"iter"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
)

// bulkReport is what bulkCheck found: the same rules as check, counted in
// Postgres, so a soak of millions of messages is checked without holding
// them in the suite's memory; and the wait of every message from its
// acknowledgement by NATS to its processed row.
type bulkReport struct {
	published, stored                         int
	lost, duplicated, unexpected, unprocessed int
	// examples are up to ten ids per kind, with what is wrong with each.
	examples map[string][]string
	// waits are counted in waitBounds' buckets; the last bucket is
	// everything above the last bound.
	waits                     []int
	p50, p90, p99, p999, maxW time.Duration
	// longest are the messages that waited longest, with when NATS
	// acknowledged each.
	longest []waited
}

// waited is one message's wait.
type waited struct {
	id    string
	acked time.Time
	wait  time.Duration
}

// waitBounds are the upper bounds of the latency histogram's buckets.
var waitBounds = []time.Duration{
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute,
}

func (r *bulkReport) ok() bool { return r.lost+r.duplicated+r.unexpected+r.unprocessed == 0 }

// bulkCheck compares the published ids (with when NATS acknowledged each)
// with the ingestion_messages and device_telemetry_logs rows and the
// analytics events, as check does: lost (a published id without a message
// row, a telemetry row or an event), duplicated (more than one of any),
// unexpected (rows and events of ids never published) and unprocessed (a
// message not completed or a row not processed). The ids and the event ids
// are copied into temporary tables and compared there.
func bulkCheck(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, published iter.Seq2[string, time.Time]) (*bulkReport, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("bulk check: %w", err)
	}
	defer conn.Release()
	c := conn.Conn()
	for _, sql := range []string{
		// Hash joins over millions of ids, in memory.
		`set work_mem = '256MB'`,
		`create temp table check_published (source_message_id text primary key, acked_at timestamptz not null)`,
		`create temp table check_events (message_id text not null)`,
	} {
		if _, err := c.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("bulk check: %w", err)
		}
	}
	defer func() {
		ctx := context.WithoutCancel(ctx)
		_, _ = c.Exec(ctx, `drop table if exists check_published, check_events, check_result`)
		_, _ = c.Exec(ctx, `reset work_mem`)
	}()

	next, stop := iter.Pull2(published)
	defer stop()
	if _, err := c.CopyFrom(ctx, pgx.Identifier{"check_published"}, []string{"source_message_id", "acked_at"},
		pgx.CopyFromFunc(func() ([]any, error) {
			id, at, ok := next()
			if !ok {
				return nil, nil
			}
			return []any{id, at}, nil
		})); err != nil {
		return nil, fmt.Errorf("bulk check: copy the published ids: %w", err)
	}

	// The events go in chunks, so a long stream is never in memory whole.
	var chunk [][]any
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		_, err := c.CopyFrom(ctx, pgx.Identifier{"check_events"}, []string{"message_id"}, pgx.CopyFromRows(chunk))
		chunk = chunk[:0]
		return err
	}
	if err := eachAnalytics(ctx, js, func(id string) error {
		chunk = append(chunk, []any{id})
		if len(chunk) == 10000 {
			return flush()
		}
		return nil
	}, func() error {
		chunk = chunk[:0]
		_, err := c.Exec(ctx, `truncate check_events`)
		return err
	}); err != nil {
		return nil, fmt.Errorf("bulk check: %w", err)
	}
	if err := flush(); err != nil {
		return nil, fmt.Errorf("bulk check: copy the analytics events: %w", err)
	}
	for _, sql := range []string{`analyze check_published`, `analyze check_events`, `create temp table check_result as
		with m as (
			select source_message_id s, count(*) n, count(*) filter (where status <> 'completed') bad,
				string_agg(status, ',') statuses
			from ingestion_messages where source_message_id in (select source_message_id from check_published) group by 1),
		t as (
			select m.source_message_id s, count(*) n, count(*) filter (where t.processing_state <> 'processed') bad,
				string_agg(t.processing_state, ',') states, max(t.processed_at) processed_at
			from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
			where m.source_message_id in (select source_message_id from check_published) group by 1),
		e as (
			select m.source_message_id s, count(*) n
			from check_events e join ingestion_messages m on m.id::text = e.message_id
			where m.source_message_id in (select source_message_id from check_published) group by 1)
		select p.source_message_id id, p.acked_at, coalesce(m.n, 0) msgs, coalesce(t.n, 0) tels, coalesce(e.n, 0) events,
			coalesce(m.bad, 0) + coalesce(t.bad, 0) bad, coalesce(m.statuses, '') statuses, coalesce(t.states, '') states,
			case when coalesce(t.bad, 1) = 0 then t.processed_at end processed_at
		from check_published p left join m on m.s = p.source_message_id left join t on t.s = p.source_message_id
			left join e on e.s = p.source_message_id`,
		`analyze check_result`,
	} {
		if _, err := c.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("bulk check: %w", err)
		}
	}

	r := &bulkReport{examples: map[string][]string{}}
	err = c.QueryRow(ctx, `select
			count(*),
			count(*) filter (where tels > 0),
			count(*) filter (where msgs = 0 or tels = 0 or events = 0),
			count(*) filter (where msgs > 1 or tels > 1 or events > 1),
			count(*) filter (where bad > 0),
			(select count(*) from ingestion_messages m where not exists (select 1 from check_published p where p.source_message_id = m.source_message_id))
			+ (select count(*) from device_telemetry_logs t where not exists (select 1 from ingestion_messages m
				join check_published p on p.source_message_id = m.source_message_id where m.id = t.ingestion_message_id))
			+ (select count(distinct e.message_id) from check_events e where not exists (select 1 from ingestion_messages m
				join check_published p on p.source_message_id = m.source_message_id where m.id::text = e.message_id))
		from check_result`).Scan(&r.published, &r.stored, &r.lost, &r.duplicated, &r.unprocessed, &r.unexpected)
	if err != nil {
		return nil, fmt.Errorf("bulk check: count: %w", err)
	}

	for kind, sql := range map[string]string{
		"lost": `select id || ' (' || msgs || ' message rows, ' || tels || ' telemetry rows, ' || events || ' analytics events)'
			from check_result where msgs = 0 or tels = 0 or events = 0 order by id limit 10`,
		"duplicated": `select id || ' (' || msgs || ' message rows, ' || tels || ' telemetry rows, ' || events || ' analytics events)'
			from check_result where msgs > 1 or tels > 1 or events > 1 order by id limit 10`,
		"unprocessed": `select id || ' (message ' || statuses || ', row ' || states || ')' from check_result where bad > 0 order by id limit 10`,
		"unexpected": `(select 'message row ' || m.id || ' (dedupe key ' || m.dedupe_key || ', ' || m.status || ')' from ingestion_messages m
				where not exists (select 1 from check_published p where p.source_message_id = m.source_message_id) order by m.id limit 10)
			union all (select 'analytics event(s) of message ' || e.message_id from check_events e where not exists (select 1 from ingestion_messages m
				join check_published p on p.source_message_id = m.source_message_id where m.id::text = e.message_id) group by 1 limit 10)`,
	} {
		rows, err := c.Query(ctx, sql)
		if err != nil {
			return nil, fmt.Errorf("bulk check: %s: %w", kind, err)
		}
		ex, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("bulk check: %s: %w", kind, err)
		}
		r.examples[kind] = ex
	}

	bounds := make([]float64, len(waitBounds))
	for i, b := range waitBounds {
		bounds[i] = b.Seconds()
	}
	r.waits = make([]int, len(waitBounds)+1)
	rows, err := c.Query(ctx, `select width_bucket(extract(epoch from processed_at - acked_at)::float8, $1::float8[]), count(*)
		from check_result where processed_at is not null group by 1`, bounds)
	if err != nil {
		return nil, fmt.Errorf("bulk check: histogram: %w", err)
	}
	var bucket, count int
	if _, err := pgx.ForEachRow(rows, []any{&bucket, &count}, func() error {
		r.waits[bucket] += count
		return nil
	}); err != nil {
		return nil, fmt.Errorf("bulk check: histogram: %w", err)
	}
	var p50, p90, p99, p999, maxW *float64
	if err := c.QueryRow(ctx, `select
			percentile_cont(0.5) within group (order by w), percentile_cont(0.9) within group (order by w),
			percentile_cont(0.99) within group (order by w), percentile_cont(0.999) within group (order by w), max(w)
		from (select extract(epoch from processed_at - acked_at)::float8 w from check_result where processed_at is not null) x`).
		Scan(&p50, &p90, &p99, &p999, &maxW); err != nil {
		return nil, fmt.Errorf("bulk check: percentiles: %w", err)
	}
	for _, p := range []struct {
		dst *time.Duration
		v   *float64
	}{{&r.p50, p50}, {&r.p90, p90}, {&r.p99, p99}, {&r.p999, p999}, {&r.maxW, maxW}} {
		if p.v != nil {
			*p.dst = time.Duration(*p.v * float64(time.Second))
		}
	}
	rows, err = c.Query(ctx, `select id, acked_at, extract(epoch from processed_at - acked_at)::float8 from check_result
		where processed_at is not null order by processed_at - acked_at desc limit 5`)
	if err != nil {
		return nil, fmt.Errorf("bulk check: longest waits: %w", err)
	}
	var w waited
	var secs float64
	if _, err := pgx.ForEachRow(rows, []any{&w.id, &w.acked, &secs}, func() error {
		w.wait = time.Duration(secs * float64(time.Second))
		r.longest = append(r.longest, w)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("bulk check: longest waits: %w", err)
	}
	return r, nil
}

// summary renders the set check's counts and examples.
func (r *bulkReport) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "published %d, stored %d, lost %d, duplicated %d, unexpected %d, unprocessed %d\n",
		r.published, r.stored, r.lost, r.duplicated, r.unexpected, r.unprocessed)
	for _, kind := range []string{"lost", "duplicated", "unexpected", "unprocessed"} {
		if ex := r.examples[kind]; len(ex) > 0 {
			fmt.Fprintf(&b, "  %s, the first: %s\n", kind, strings.Join(ex, "; "))
		}
	}
	return b.String()
}

// histogram renders the waits from publish to processed: percentiles, then
// one line per bucket with its share and a bar.
func (r *bulkReport) histogram() string {
	var b strings.Builder
	total := 0
	for _, n := range r.waits {
		total += n
	}
	fmt.Fprintf(&b, "publish -> processed, %d messages: p50 %s, p90 %s, p99 %s, p99.9 %s, max %s\n", total,
		roundWait(r.p50), roundWait(r.p90), roundWait(r.p99), roundWait(r.p999), roundWait(r.maxW))
	if total == 0 {
		return b.String()
	}
	w := tabwriter.NewWriter(&b, 0, 0, 1, ' ', 0)
	lo := "0"
	for i, n := range r.waits {
		label := "> " + waitBounds[len(waitBounds)-1].String()
		if i < len(waitBounds) {
			label = lo + " .. " + waitBounds[i].String()
			lo = waitBounds[i].String()
		}
		share := float64(n) / float64(total)
		bar := strings.Repeat("#", int(math.Ceil(share*50)))
		if n == 0 {
			bar = ""
		}
		fmt.Fprintf(w, "  %s\t%d\t%6.2f%%\t%s\n", label, n, share*100, bar)
	}
	_ = w.Flush()
	return b.String()
}

func roundWait(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(10 * time.Millisecond)
}

// agrees returns how r differs from the fault suite's own check of the
// same run (rep) and timings (tm): nothing when the two checkers agree.
func (r *bulkReport) agrees(rep *report, tm timings) []string {
	var out []string
	for _, c := range []struct {
		what       string
		bulk, mine int
	}{
		{"published", r.published, rep.published}, {"stored", r.stored, rep.stored},
		{"lost", r.lost, len(rep.lost)}, {"duplicated", r.duplicated, len(rep.duplicated)},
		{"unexpected", r.unexpected, len(rep.unexpected)}, {"unprocessed", r.unprocessed, len(rep.unprocessed)},
	} {
		if c.bulk != c.mine {
			out = append(out, fmt.Sprintf("%s: the bulk check counts %d, the check %d", c.what, c.bulk, c.mine))
		}
	}
	// Postgres keeps microseconds.
	if d := r.maxW - tm.longestWait; d > time.Millisecond || d < -time.Millisecond {
		out = append(out, fmt.Sprintf("longest wait: the bulk check measures %s, the timings %s", r.maxW, tm.longestWait))
	}
	return out
}
