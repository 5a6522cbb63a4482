package pipelinestate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
)

// errNoDatabase is returned by a Postgres read of a reader that has no pool.
var errNoDatabase = errors.New("no database")

// The queries below read what is kept for them and nothing else: the
// per-minute counts the stage-log writers add to in the transaction that
// writes the rows (about a hundred rows a minute whatever the traffic),
// and the publish outbox's entries (a batch each). At 20,000 messages a
// second, counting the stage logs or the telemetry rows instead took
// seconds a refresh (migrations/00011_read_model_counts.sql says why).

// countsSQL sums the per-minute counts of the last minutes by stage,
// status and reason code, counting messages (rows less the repeated
// failures of the publish retry loop), with the example of the latest
// minute that kept one.
const countsSQL = `
select stage, status, reason_code, sum(rows - repeats)::bigint,
	coalesce(left((array_agg(example order by minute desc) filter (where example is not null))[1], $2), '')
from ingestion_stage_counts
where minute >= date_trunc('minute', now() - make_interval(mins => $1))
group by 1, 2, 3`

// durationsSQL adds the per-minute duration histograms of the last
// minutes up per stage, bucket by bucket, so a window's histograms come
// as six short arrays rather than one per minute, stage and slot.
const durationsSQL = `
select stage, i::int, sum(n)::bigint
from ingestion_stage_counts cross join lateral unnest(durations) with ordinality as h(n, i)
where minute >= date_trunc('minute', now() - make_interval(mins => $1))
group by 1, 2`

// examplesSQL finds the reason of the latest stage-log row of each of the
// given groups, for the groups whose counts kept no example (counted by a
// writer of an older version). It reads the partial index of the rows that
// are not completed, one row per group, and is not run at all once every
// count has its example.
const examplesSQL = `
select g.stage, g.status, g.code, coalesce(left(x.example, $5), '')
from unnest($1::text[], $2::text[], $3::text[]) as g(stage, status, code)
cross join lateral (
	select coalesce(l.errors->>'reason', l.errors::text) as example from ingestion_stage_logs l
	where l.status <> 'completed' and l.stage = g.stage and l.status = g.status and coalesce(l.reason_code, '') = g.code
	  and l.created_at > now() - make_interval(mins => $4)
	order by l.created_at desc limit 1) x`

// Activity reads what the stages did over the last minutes; with
// durations, the stages' duration histograms too.
func (r *Reader) Activity(ctx context.Context, minutes int, durations bool) (Activity, error) {
	a := Activity{Minutes: minutes}
	if r.pool == nil {
		return a, errNoDatabase
	}
	rows, err := r.pool.Query(ctx, countsSQL, minutes, pipeline.ReasonWidth)
	if err != nil {
		return a, fmt.Errorf("stage counts: %w", err)
	}
	a.Counts, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Count, error) {
		var c Count
		err := row.Scan(&c.Stage, &c.Status, &c.Code, &c.Count, &c.Example)
		return c, err
	})
	if err != nil {
		return a, fmt.Errorf("stage counts: %w", err)
	}
	if err := r.fillExamples(ctx, minutes, a.Counts); err != nil {
		return a, err
	}
	for i := range a.Counts {
		if a.Counts[i].Code == "" && a.Counts[i].Status != stagelog.StatusCompleted {
			a.Counts[i].Code = reason.Unclassified
		}
	}
	sortCounts(a.Counts)
	if !durations {
		return a, nil
	}
	rows, err = r.pool.Query(ctx, durationsSQL, minutes)
	if err != nil {
		return a, fmt.Errorf("stage durations: %w", err)
	}
	a.Durations = map[string][]int64{}
	var (
		stage  string
		bucket int
		n      int64
	)
	_, err = pgx.ForEachRow(rows, []any{&stage, &bucket, &n}, func() error {
		h := a.Durations[stage]
		for len(h) < bucket {
			h = append(h, 0)
		}
		h[bucket-1] += n
		a.Durations[stage] = h
		return nil
	})
	if err != nil {
		return a, fmt.Errorf("stage durations: %w", err)
	}
	return a, nil
}

// fillExamples sets the example of the counts that are not completed and
// kept none, from the stage logs.
func (r *Reader) fillExamples(ctx context.Context, minutes int, counts []Count) error {
	var stages, statuses, codes []string
	for _, c := range counts {
		if c.Example == "" && c.Status != stagelog.StatusCompleted {
			stages, statuses, codes = append(stages, c.Stage), append(statuses, c.Status), append(codes, c.Code)
		}
	}
	if len(stages) == 0 {
		return nil
	}
	rows, err := r.pool.Query(ctx, examplesSQL, stages, statuses, codes, minutes, pipeline.ReasonWidth)
	if err != nil {
		return fmt.Errorf("stage log examples: %w", err)
	}
	var stage, status, code, example string
	_, err = pgx.ForEachRow(rows, []any{&stage, &status, &code, &example}, func() error {
		for i := range counts {
			if c := &counts[i]; c.Stage == stage && c.Status == status && c.Code == code {
				c.Example = example
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("stage log examples: %w", err)
	}
	return nil
}

// Switches reads the pipeline switches: the global row first, then every
// organization by slug, those without a row of their own included (all
// on, following the global switches).
func (r *Reader) Switches(ctx context.Context) ([]ops.SwitchRow, error) {
	if r.pool == nil {
		return nil, errNoDatabase
	}
	out, err := ops.GetSwitches(ctx, r.pool, "")
	if err != nil {
		return nil, err
	}
	rows, err := r.pool.Query(ctx, `select o.id, o.slug from organizations o
		where not exists (select 1 from pipeline_switches s where s.organization_id = o.id)`)
	if err != nil {
		return nil, fmt.Errorf("organizations: %w", err)
	}
	var (
		id   uuid.UUID
		slug string
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &slug}, func() error {
		org := id
		out = append(out, ops.SwitchRow{
			OrganizationID: &org, Organization: slug,
			Switches:  ops.Switches{PipelineEnabled: true, PublishAnalytics: true, PublishInvalidEvents: true},
			Effective: out[0].Switches,
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("organizations: %w", err)
	}
	orgs := out[1:]
	slices.SortFunc(orgs, func(a, b ops.SwitchRow) int { return cmp.Compare(a.Organization, b.Organization) })
	return out, nil
}

// Outbox is what the publish outbox holds for another attempt.
type Outbox struct {
	// PublishFailed counts the rows whose last publish attempt failed
	// and that wait for the next; Recent, those that failed in the last
	// minutes.
	PublishFailed, Recent int64
}

// outboxSQL counts the rows of the outbox entries that hold failed
// publishes, from the count each entry keeps (its array only for an entry
// from before counts were kept), so it reads neither the arrays nor the
// telemetry rows. An entry made for a replay that publishes leaves the
// rows' failed entry behind until the retry loop takes it and finds them
// published: until then those rows are counted.
const outboxSQL = `
select coalesce(sum(coalesce(row_count, cardinality(message_ids))), 0)::bigint,
	coalesce(sum(coalesce(row_count, cardinality(message_ids))) filter (where created_at > now() - make_interval(mins => $1)), 0)::bigint
from publish_outbox where attempts > 0`

// Outbox reads what the publish outbox holds for another attempt; recent
// are those whose last attempt was in the last minutes.
func (r *Reader) Outbox(ctx context.Context, minutes int) (Outbox, error) {
	var o Outbox
	if r.pool == nil {
		return o, errNoDatabase
	}
	if err := r.pool.QueryRow(ctx, outboxSQL, minutes).Scan(&o.PublishFailed, &o.Recent); err != nil {
		return o, fmt.Errorf("publish outbox: %w", err)
	}
	return o, nil
}

// PublishFailedRow is one telemetry row whose publish failed.
type PublishFailedRow struct {
	MessageID     uuid.UUID  `json:"message_id"`
	Organization  string     `json:"organization"`
	Device        string     `json:"device"`
	Topic         string     `json:"topic"`
	Reason        string     `json:"reason"`
	Attempts      int32      `json:"attempts"`
	RecordedAt    time.Time  `json:"recorded_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	NextPublishAt *time.Time `json:"next_publish_at,omitempty"`
}

// latestFailedSQL reads the latest publish_failed rows from the latest
// outbox entries of failed publishes, a few rows of each, so it looks up
// no more rows than it shows, however many wait.
const latestFailedSQL = `
select t.id, coalesce(o.slug, ''), coalesce(d.external_id, t.device_id::text), t.topic,
	coalesce(t.failure_reason, ''), t.publish_attempts, t.recorded_at, t.updated_at, t.next_publish_at
from (select message_ids, recorded_from, recorded_to from publish_outbox where attempts > 0 order by created_at desc limit $1) e
cross join lateral (select id from unnest(e.message_ids) as u(id) limit $1) m
join device_telemetry_logs t on t.id = m.id and t.recorded_at between e.recorded_from and e.recorded_to
left join devices d on d.id = t.device_id
left join organizations o on o.id = t.organization_id
where t.processing_state = 'publish_failed'
order by t.updated_at desc, t.id limit $1`

// LatestPublishFailed reads up to n of the rows whose publish failed
// last, the latest first.
func (r *Reader) LatestPublishFailed(ctx context.Context, n int) ([]PublishFailedRow, error) {
	if r.pool == nil {
		return nil, errNoDatabase
	}
	rows, err := r.pool.Query(ctx, latestFailedSQL, n)
	if err != nil {
		return nil, fmt.Errorf("publish_failed rows: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (PublishFailedRow, error) {
		var p PublishFailedRow
		err := row.Scan(&p.MessageID, &p.Organization, &p.Device, &p.Topic, &p.Reason, &p.Attempts, &p.RecordedAt, &p.UpdatedAt, &p.NextPublishAt)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("publish_failed rows: %w", err)
	}
	return out, nil
}

// Parked reads how many messages are parked, by organization name (see
// [OrganizationName]). It reads the index of unfinished messages over the
// parked ones only: what is held, not what went through.
func (r *Reader) Parked(ctx context.Context) (map[string]int64, error) {
	if r.pool == nil {
		return nil, errNoDatabase
	}
	rows, err := r.pool.Query(ctx, `select coalesce(m.organization_id::text, ''), coalesce(o.slug, ''), count(*)
		from ingestion_messages m left join organizations o on o.id = m.organization_id
		where m.status = 'parked' group by 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("parked messages: %w", err)
	}
	out := map[string]int64{}
	var (
		id, slug string
		n        int64
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &slug, &n}, func() error {
		out[OrganizationName(id, slug)] += n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("parked messages: %w", err)
	}
	return out, nil
}

// ParkedTotal reads how many messages are parked, from the index of
// unfinished messages alone; [Reader.Parked] also reads each message for
// its organization.
func (r *Reader) ParkedTotal(ctx context.Context) (int64, error) {
	if r.pool == nil {
		return 0, errNoDatabase
	}
	var n int64
	if err := r.pool.QueryRow(ctx, `select count(*) from ingestion_messages where status = 'parked'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("parked messages: %w", err)
	}
	return n, nil
}

// GlobalSwitch names the global row of pipeline_switches where
// organizations are named.
const GlobalSwitch = "(global)"

// OrganizationName names an organization by its slug, else its id; no id
// is the global switch.
func OrganizationName(id, slug string) string {
	switch {
	case id == "":
		return GlobalSwitch
	case slug != "":
		return slug
	default:
		return id
	}
}
