// Package health gathers what an operator needs to tell whether a telemesh
// mesh works: each stage's gRPC health, the JetStream stream and consumer,
// the pipeline switches, what every stage did over the last minutes, and
// the publish outbox. [Doctor] walks the operational decision tree over it.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/telemesh/telemesh/internal/natsx"
	"github.com/telemesh/telemesh/internal/outbox"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/tlsx"
)

// Stages lists the stages in chain order, as their targets are keyed.
var Stages = pipeline.ServiceNames()

// Serving is the health status of a stage that answers SERVING.
const Serving = "SERVING"

// Config says where the mesh is and what to look at.
type Config struct {
	// DatabaseURL is the Postgres the stages write to.
	DatabaseURL string
	// NATSURL is the NATS server the gateway reads from.
	NATSURL string
	// Targets maps each stage name to its gRPC target: host:port,
	// dns:///host:port, or a comma-separated list of host:port.
	Targets map[string]string
	// Stream and Consumer are the gateway's JetStream stream and durable
	// consumer.
	Stream, Consumer string
	// Bucket and AnalyticsStream are the publisher's KV bucket and stream.
	Bucket, AnalyticsStream string
	// Minutes is how far back the stage logs and the outbox are summarised.
	Minutes int
	// Timeout bounds every single check (one health call, one query).
	Timeout time.Duration
	// TLS, when its files are set, makes the health calls to the stages
	// over mutual TLS, as the stages call each other.
	TLS tlsx.Files
	// TLSServerName, if set, is the name the stages' certificates are
	// verified against, instead of the host of each target.
	TLSServerName string
	// NATSAuth authenticates the connection to NATS.
	NATSAuth natsx.Auth
}

// DefaultConfig returns the names and ports a local mesh uses.
func DefaultConfig() Config {
	return Config{
		NATSURL: "nats://127.0.0.1:4222",
		Targets: map[string]string{
			"gateway":   "127.0.0.1:7070",
			"validator": "127.0.0.1:7071",
			"deriver":   "127.0.0.1:7072",
			"persister": "127.0.0.1:7073",
			"publisher": "127.0.0.1:7074",
		},
		Stream:          "TELEMETRY",
		Consumer:        "telemesh-gateway",
		Bucket:          "device-states",
		AnalyticsStream: "TELEMESH_ANALYTICS",
		Minutes:         5,
		Timeout:         3 * time.Second,
	}
}

// withDefaults fills the zero fields of c from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Stream == "" {
		c.Stream = d.Stream
	}
	if c.Consumer == "" {
		c.Consumer = d.Consumer
	}
	if c.Bucket == "" {
		c.Bucket = d.Bucket
	}
	if c.AnalyticsStream == "" {
		c.AnalyticsStream = d.AnalyticsStream
	}
	if c.Minutes <= 0 {
		c.Minutes = d.Minutes
	}
	if c.Timeout <= 0 {
		c.Timeout = d.Timeout
	}
	return c
}

// The states of a mesh, as [Report.State] reads them.
const (
	// StateHealthy is a mesh with nothing wrong and the pipeline on.
	StateHealthy = "healthy"
	// StatePaused is a mesh with nothing wrong whose global pipeline switch
	// is off: consumption stopped on purpose and the stream keeps the
	// backlog. It is neither healthy nor a fault.
	StatePaused = "paused"
	// StateUnhealthy is a mesh with at least one problem.
	StateUnhealthy = "unhealthy"
)

// Report is the state of a mesh at one moment.
type Report struct {
	At      time.Time `json:"at"`
	Minutes int       `json:"minutes"`
	// State is [StateHealthy], [StatePaused] or [StateUnhealthy].
	State string `json:"state"`
	// Pause is set while the global pipeline switch is off.
	Pause *Pause `json:"pause,omitempty"`
	// OrganizationsOff are the organizations whose own pipeline switch is
	// off, with their parked messages. They do not pause the mesh.
	OrganizationsOff []OrganizationOff `json:"organizations_off,omitempty"`
	Stages           []StageHealth     `json:"stages"`
	Stream           *StreamInfo       `json:"stream,omitempty"`
	Consumer         *ConsumerInfo     `json:"consumer,omitempty"`
	// BucketPresent and AnalyticsPresent say whether the publisher's KV
	// bucket and analytics stream exist.
	BucketPresent    bool `json:"bucket_present"`
	AnalyticsPresent bool `json:"analytics_stream_present"`
	// Switches are the rows of pipeline_switches, the global one first.
	Switches []Switch `json:"switches"`
	// Throughput is what each stage did over the last Minutes.
	Throughput []StageCount `json:"throughput"`
	// PublishFailed counts every publish_failed telemetry row;
	// PublishFailedRecent those changed in the last Minutes.
	// PublishFailedReasons are the publish failures of the last Minutes by
	// reason code, the most frequent first.
	PublishFailed        int               `json:"publish_failed"`
	PublishFailedRecent  int               `json:"publish_failed_recent"`
	PublishFailedReasons []ReasonCount     `json:"publish_failed_reasons,omitempty"`
	Parked               int               `json:"parked"`
	Errors               map[string]string `json:"errors,omitempty"`
	// Problems lists, one line each, what makes the mesh unhealthy. A
	// pause is not a problem.
	Problems []string `json:"problems,omitempty"`

	// parkedBy counts the parked messages per organization name.
	parkedBy map[string]int
}

// StageHealth is one stage's gRPC health over every address of its target.
type StageHealth struct {
	Stage     string          `json:"stage"`
	Target    string          `json:"target"`
	Status    string          `json:"status"`
	Addresses []AddressHealth `json:"addresses"`
}

// AddressHealth is the answer of one address to grpc.health.v1 Check.
type AddressHealth struct {
	Address string `json:"address"`
	Status  string `json:"status"`
	Error   string `json:"error,omitempty"`
}

// StreamInfo is what the report shows of a JetStream stream.
type StreamInfo struct {
	Name     string    `json:"name"`
	Subjects []string  `json:"subjects"`
	Messages uint64    `json:"messages"`
	LastSeq  uint64    `json:"last_seq"`
	LastTime time.Time `json:"last_time"`
}

// ConsumerInfo is what the report shows of the gateway's durable consumer.
type ConsumerInfo struct {
	Name           string   `json:"name"`
	Stream         string   `json:"stream"`
	FilterSubjects []string `json:"filter_subjects,omitempty"`
	Pending        uint64   `json:"pending"`
	AckPending     int      `json:"ack_pending"`
	Redelivered    int      `json:"redelivered"`
	WaitingPulls   int      `json:"waiting_pulls"`
	DeliveredSeq   uint64   `json:"delivered_stream_seq"`
}

// Switch is one row of pipeline_switches.
type Switch struct {
	Organization         string    `json:"organization"`
	PipelineEnabled      bool      `json:"pipeline_enabled"`
	PublishAnalytics     bool      `json:"publish_analytics"`
	PublishInvalidEvents bool      `json:"publish_invalid_events"`
	UpdatedAt            time.Time `json:"updated_at"`
	UpdatedBy            string    `json:"updated_by,omitempty"`
}

// Pause is a pipeline switched off on purpose: since when, by whom, and
// how many messages wait for it in the stream.
type Pause struct {
	// Since and By are when the global switch row last changed and who
	// changed it.
	Since time.Time `json:"since"`
	By    string    `json:"by,omitempty"`
	// Backlog is the gateway consumer's pending count: the messages in the
	// stream not delivered yet, taken when the pipeline is switched on.
	Backlog uint64 `json:"backlog"`
}

// OrganizationOff is an organization whose pipeline switch is off: its
// messages are parked, kept and resumed when it is switched back on.
type OrganizationOff struct {
	Organization string    `json:"organization"`
	Since        time.Time `json:"since"`
	By           string    `json:"by,omitempty"`
	Parked       int       `json:"parked"`
}

// StageCount is how many stage-log rows one stage wrote with one status
// and reason code, with the full text of one of them.
type StageCount struct {
	Stage  string `json:"stage"`
	Status string `json:"status"`
	// Code is the rows' reason code (package reason); empty for completed
	// rows, reason.Unclassified for rows written without one.
	Code  string `json:"code,omitempty"`
	Count int    `json:"count"`
	// Example is the reason of the latest of the rows, as written.
	Example string `json:"example,omitempty"`
}

// ReasonCount is one reason code of failures, how many messages it hit,
// and the full text of the latest.
type ReasonCount struct {
	Code    string `json:"code"`
	Count   int    `json:"count"`
	Example string `json:"example,omitempty"`
}

// Healthy reports whether nothing in the report is wrong and the pipeline
// runs; a paused pipeline is not healthy, nor is it a fault.
func (r *Report) Healthy() bool { return r.state() == StateHealthy }

// state reads the report: any problem makes it unhealthy, even while
// paused, since a pause must not hide a fault; otherwise a global switch
// that is off makes it paused.
func (r *Report) state() string {
	switch {
	case len(r.Problems) > 0:
		return StateUnhealthy
	case r.Pause != nil:
		return StatePaused
	default:
		return StateHealthy
	}
}

// Stage returns the health of the named stage, or nil.
func (r *Report) Stage(name string) *StageHealth {
	for i := range r.Stages {
		if r.Stages[i].Stage == name {
			return &r.Stages[i]
		}
	}
	return nil
}

// stageCounts sums the per-minute counts of the stage logs of the last
// minutes by stage, status and reason code; the example of each group that
// is not completed is found apart, by the partial index on the rows that
// are not completed, so neither reads the completed rows.
const stageCounts = `
with g as (
	select stage, status, reason_code, sum(rows) as n from ingestion_stage_counts
	where minute >= date_trunc('minute', now() - make_interval(mins => $1))
	group by 1, 2, 3)
select g.stage, g.status, g.reason_code, g.n, coalesce(left(x.example, $2), '')
from g left join lateral (
	select coalesce(l.errors->>'reason', l.errors::text) as example from ingestion_stage_logs l
	where g.status <> 'completed' and l.status <> 'completed' and l.stage = g.stage and l.status = g.status
	  and coalesce(l.reason_code, '') = g.reason_code and l.created_at > now() - make_interval(mins => $1)
	order by l.created_at desc limit 1) x on true
order by 1, 2, 4 desc, 3`

// publishFailures groups the publish failures of the last minutes by
// reason code, counting each message once however often it was retried.
const publishFailures = `
with g as (
	select reason_code, count(distinct message_id) as n from ingestion_stage_logs
	where stage = 'publish' and status = 'failed' and status <> 'completed' and created_at > now() - make_interval(mins => $1)
	group by 1)
select coalesce(g.reason_code, ''), g.n, coalesce(left(x.example, $2), '')
from g left join lateral (
	select l.errors->>'reason' as example from ingestion_stage_logs l
	where l.stage = 'publish' and l.status = 'failed' and l.status <> 'completed' and l.reason_code is not distinct from g.reason_code
	  and l.created_at > now() - make_interval(mins => $1)
	order by l.created_at desc limit 1) x on true
order by 2 desc, 1 limit 5`

// publishFailedCounts counts the publish_failed rows, in all and those
// that failed in the last minutes, among the rows the publish outbox holds:
// every row not yet published is there, and no index on
// device_telemetry_logs covers processing_state.
const publishFailedCounts = `
select count(*), count(*) filter (where t.updated_at > now() - make_interval(mins => $1))
from (select distinct id, recorded_from, recorded_to from (` + outbox.RowsSQL + `) r) o
join device_telemetry_logs t on t.id = o.id and t.recorded_at between o.recorded_from and o.recorded_to
where t.processing_state = 'publish_failed'`

// Gather connects to the mesh described by cfg and builds a report. A part
// that cannot be reached is recorded in the report's Errors and Problems;
// only an unusable configuration is returned as an error.
func Gather(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	r := &Report{At: time.Now().UTC(), Minutes: cfg.Minutes, Errors: map[string]string{}}
	var creds credentials.TransportCredentials
	if cfg.TLS.Enabled() {
		certs, err := tlsx.New(cfg.TLS, 0, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		creds = certs.ClientCredentials(cfg.TLSServerName)
	}
	r.Stages = CheckStagesWith(ctx, cfg.Targets, cfg.Timeout, creds)

	if cfg.NATSURL != "" {
		nc, js, err := connectNATS(cfg)
		if err != nil {
			r.Errors["nats"] = err.Error()
		} else {
			defer nc.Close()
			gatherNATS(ctx, cfg, js, r)
		}
	} else {
		r.Errors["nats"] = "no NATS URL given"
	}

	if cfg.DatabaseURL != "" {
		pool, err := pg.Open(ctx, cfg.DatabaseURL, pg.Options{ApplicationName: "telemesh-status", MaxConns: 2})
		if err != nil {
			return nil, fmt.Errorf("database: %w", err)
		}
		defer pool.Close()
		if err := gatherDB(ctx, cfg, pool, r); err != nil {
			r.Errors["database"] = err.Error()
		}
	} else {
		r.Errors["database"] = "no database URL given"
	}
	r.Pause, r.OrganizationsOff = pauses(r)
	r.Problems = problems(r, cfg)
	r.State = r.state()
	return r, nil
}

// pauses reads the switches that are off: the global one pauses the mesh,
// an organization's parks its messages.
func pauses(r *Report) (*Pause, []OrganizationOff) {
	var (
		p    *Pause
		orgs []OrganizationOff
	)
	for _, s := range r.Switches {
		switch {
		case s.PipelineEnabled:
		case s.Organization == globalSwitch:
			p = &Pause{Since: s.UpdatedAt, By: s.UpdatedBy}
			if r.Consumer != nil {
				p.Backlog = r.Consumer.Pending
			}
		default:
			orgs = append(orgs, OrganizationOff{Organization: s.Organization, Since: s.UpdatedAt, By: s.UpdatedBy,
				Parked: r.parkedBy[s.Organization]})
		}
	}
	return p, orgs
}

// connectNATS opens a NATS connection and its JetStream context.
func connectNATS(cfg Config) (*nats.Conn, jetstream.JetStream, error) {
	opts, err := cfg.NATSAuth.Options()
	if err != nil {
		return nil, nil, fmt.Errorf("connect nats: %w", err)
	}
	opts = append(opts, nats.Name("telemesh-status"), nats.Timeout(cfg.Timeout), nats.MaxReconnects(0))
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect nats: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// gatherNATS fills the stream, consumer, bucket and analytics stream.
func gatherNATS(ctx context.Context, cfg Config, js jetstream.JetStream, r *Report) {
	if si, err := streamInfo(ctx, cfg, js); err != nil {
		r.Errors["stream"] = err.Error()
	} else {
		r.Stream = si
	}
	if ci, err := consumerInfo(ctx, cfg, js); err != nil {
		r.Errors["consumer"] = err.Error()
	} else {
		r.Consumer = ci
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if _, err := js.KeyValue(cctx, cfg.Bucket); err != nil {
		r.Errors["bucket"] = fmt.Sprintf("kv bucket %s: %v", cfg.Bucket, err)
	} else {
		r.BucketPresent = true
	}
	if _, err := js.Stream(cctx, cfg.AnalyticsStream); err != nil {
		r.Errors["analytics_stream"] = fmt.Sprintf("stream %s: %v", cfg.AnalyticsStream, err)
	} else {
		r.AnalyticsPresent = true
	}
}

func streamInfo(ctx context.Context, cfg Config, js jetstream.JetStream) (*StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	s, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.Stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", cfg.Stream, err)
	}
	return &StreamInfo{
		Name: info.Config.Name, Subjects: info.Config.Subjects, Messages: info.State.Msgs,
		LastSeq: info.State.LastSeq, LastTime: info.State.LastTime,
	}, nil
}

// subjectMessages counts the stream's messages on subjects matching filter.
func subjectMessages(ctx context.Context, cfg Config, js jetstream.JetStream, filter string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	s, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", cfg.Stream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, fmt.Errorf("stream %s info for %s: %w", cfg.Stream, filter, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}

func consumerInfo(ctx context.Context, cfg Config, js jetstream.JetStream) (*ConsumerInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	c, err := js.Consumer(ctx, cfg.Stream, cfg.Consumer)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Consumer, cfg.Stream, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("consumer %s info: %w", cfg.Consumer, err)
	}
	filters := info.Config.FilterSubjects
	if info.Config.FilterSubject != "" {
		filters = append([]string{info.Config.FilterSubject}, filters...)
	}
	return &ConsumerInfo{
		Name: info.Name, Stream: info.Stream, FilterSubjects: filters,
		Pending: info.NumPending, AckPending: info.NumAckPending, Redelivered: info.NumRedelivered,
		WaitingPulls: info.NumWaiting, DeliveredSeq: info.Delivered.Stream,
	}, nil
}

// gatherDB fills the switches, the stage-log summary and the outbox counts.
func gatherDB(ctx context.Context, cfg Config, pool *pgxpool.Pool, r *Report) error {
	ctx, cancel := context.WithTimeout(ctx, 4*cfg.Timeout)
	defer cancel()
	rows, err := pool.Query(ctx, `select coalesce(s.organization_id::text, ''), coalesce(o.slug, ''), s.pipeline_enabled,
			s.publish_analytics, s.publish_invalid_events, s.updated_at, coalesce(s.updated_by, '')
		from pipeline_switches s left join organizations o on o.id = s.organization_id
		order by s.organization_id nulls first`)
	if err != nil {
		return fmt.Errorf("pipeline switches: %w", err)
	}
	for rows.Next() {
		var id, slug string
		var s Switch
		if err := rows.Scan(&id, &slug, &s.PipelineEnabled, &s.PublishAnalytics, &s.PublishInvalidEvents,
			&s.UpdatedAt, &s.UpdatedBy); err != nil {
			rows.Close()
			return fmt.Errorf("pipeline switches: %w", err)
		}
		s.UpdatedAt = s.UpdatedAt.UTC()
		s.Organization = organizationName(id, slug)
		r.Switches = append(r.Switches, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("pipeline switches: %w", err)
	}

	rows, err = pool.Query(ctx, stageCounts, cfg.Minutes, pipeline.ReasonWidth)
	if err != nil {
		return fmt.Errorf("stage logs: %w", err)
	}
	for rows.Next() {
		var c StageCount
		if err := rows.Scan(&c.Stage, &c.Status, &c.Code, &c.Count, &c.Example); err != nil {
			rows.Close()
			return fmt.Errorf("stage logs: %w", err)
		}
		if c.Code == "" && c.Status != stagelog.StatusCompleted {
			c.Code = reason.Unclassified
		}
		r.Throughput = append(r.Throughput, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("stage logs: %w", err)
	}
	sort.SliceStable(r.Throughput, func(i, j int) bool {
		return pipeline.Stage(r.Throughput[i].Stage).Order() < pipeline.Stage(r.Throughput[j].Stage).Order()
	})

	err = pool.QueryRow(ctx, publishFailedCounts, cfg.Minutes).Scan(&r.PublishFailed, &r.PublishFailedRecent)
	if err != nil {
		return fmt.Errorf("publish_failed rows: %w", err)
	}
	if r.PublishFailedRecent > 0 {
		rows, err = pool.Query(ctx, publishFailures, cfg.Minutes, pipeline.ReasonWidth)
		if err != nil {
			return fmt.Errorf("publish_failed reasons: %w", err)
		}
		for rows.Next() {
			var c ReasonCount
			if err := rows.Scan(&c.Code, &c.Count, &c.Example); err != nil {
				rows.Close()
				return fmt.Errorf("publish_failed reasons: %w", err)
			}
			if c.Code == "" {
				c.Code = reason.Unclassified
			}
			r.PublishFailedReasons = append(r.PublishFailedReasons, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("publish_failed reasons: %w", err)
		}
	}
	rows, err = pool.Query(ctx, `select coalesce(m.organization_id::text, ''), coalesce(o.slug, ''), count(*)
		from ingestion_messages m left join organizations o on o.id = m.organization_id
		where m.status = 'parked' group by 1, 2`)
	if err != nil {
		return fmt.Errorf("parked messages: %w", err)
	}
	r.parkedBy = map[string]int{}
	for rows.Next() {
		var (
			id, slug string
			n        int
		)
		if err := rows.Scan(&id, &slug, &n); err != nil {
			rows.Close()
			return fmt.Errorf("parked messages: %w", err)
		}
		r.parkedBy[organizationName(id, slug)] += n
		r.Parked += n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("parked messages: %w", err)
	}
	return nil
}

// globalSwitch names the global row of pipeline_switches in a report.
const globalSwitch = "(global)"

// organizationName names an organization by its slug, else its id; no id
// is the global switch.
func organizationName(id, slug string) string {
	switch {
	case id == "":
		return globalSwitch
	case slug != "":
		return slug
	default:
		return id
	}
}

// problems lists what is wrong in r.
func problems(r *Report, cfg Config) []string {
	var out []string
	for _, s := range r.Stages {
		if s.Status != Serving {
			out = append(out, fmt.Sprintf("stage %s (%s) is %s", s.Stage, s.Target, s.Status))
		}
	}
	keys := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s: %s", k, r.Errors[k]))
	}
	if r.Consumer != nil && r.Consumer.Stream != cfg.Stream {
		out = append(out, fmt.Sprintf("consumer %s is bound to stream %s, not %s", r.Consumer.Name, r.Consumer.Stream, cfg.Stream))
	}
	if r.PublishFailedRecent > 0 {
		out = append(out, fmt.Sprintf("%d publish_failed rows in the last %d minutes", r.PublishFailedRecent, r.Minutes))
	}
	return out
}

// CheckStages asks every stage's target for its gRPC health. Stages with
// no target are reported as UNKNOWN.
func CheckStages(ctx context.Context, targets map[string]string, timeout time.Duration) []StageHealth {
	return CheckStagesWith(ctx, targets, timeout, nil)
}

// CheckStagesWith is [CheckStages] over creds, e.g. a [tlsx.Reloader]'s
// client credentials when the stages require mutual TLS; nil is plaintext.
func CheckStagesWith(ctx context.Context, targets map[string]string, timeout time.Duration, creds credentials.TransportCredentials) []StageHealth {
	out := make([]StageHealth, len(Stages))
	done := make(chan struct{}, len(Stages))
	for i, stage := range Stages {
		go func() {
			defer func() { done <- struct{}{} }()
			out[i] = checkTarget(ctx, stage, targets[stage], timeout, creds)
		}()
	}
	for range Stages {
		<-done
	}
	return out
}

// CheckTarget asks every address of a gRPC target for its health: a
// dns:///host:port target is resolved and each address checked, a
// comma-separated list checks each entry. The stage is SERVING only when
// every address is.
func CheckTarget(ctx context.Context, stage, target string, timeout time.Duration) StageHealth {
	return checkTarget(ctx, stage, target, timeout, nil)
}

// checkTarget is [CheckTarget] over creds (nil: plaintext).
func checkTarget(ctx context.Context, stage, target string, timeout time.Duration, creds credentials.TransportCredentials) StageHealth {
	h := StageHealth{Stage: stage, Target: target}
	if strings.TrimSpace(target) == "" {
		h.Status = "UNKNOWN"
		h.Addresses = []AddressHealth{{Status: "UNKNOWN", Error: "no target configured"}}
		return h
	}
	addrs, err := resolve(ctx, target, timeout)
	if err != nil {
		h.Status = "UNREACHABLE"
		h.Addresses = []AddressHealth{{Address: target, Status: "UNREACHABLE", Error: err.Error()}}
		return h
	}
	h.Status = Serving
	for _, a := range addrs {
		ah := checkAddress(ctx, a, timeout, creds)
		if ah.Status != Serving && h.Status == Serving {
			h.Status = ah.Status
		}
		h.Addresses = append(h.Addresses, ah)
	}
	return h
}

// address is one host:port to check and the host name its certificate
// is verified against.
type address struct {
	addr, host string
}

// resolve turns a target into the host:port addresses to check.
func resolve(ctx context.Context, target string, timeout time.Duration) ([]address, error) {
	var out []address
	for _, part := range strings.Split(target, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, ok := strings.CutPrefix(part, "dns:///")
		if !ok {
			host, _, err := net.SplitHostPort(part)
			if err != nil {
				host = part
			}
			out = append(out, address{addr: part, host: host})
			continue
		}
		host, port, err := net.SplitHostPort(name)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", part, err)
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		ips, err := net.DefaultResolver.LookupHost(rctx, host)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		sort.Strings(ips)
		for _, ip := range ips {
			out = append(out, address{addr: net.JoinHostPort(ip, port), host: host})
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no addresses")
	}
	return out, nil
}

// checkAddress calls grpc.health.v1 Check on one address, over creds
// (nil: plaintext).
func checkAddress(ctx context.Context, a address, timeout time.Duration, creds credentials.TransportCredentials) AddressHealth {
	ah := AddressHealth{Address: a.addr}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if creds != nil {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(creds)}
		if creds.Info().ServerName == "" {
			// A resolved address is an IP; the certificate names the host.
			opts = append(opts, grpc.WithAuthority(a.host))
		}
	}
	conn, err := grpc.NewClient("passthrough:///"+a.addr, opts...)
	if err != nil {
		ah.Status, ah.Error = "UNREACHABLE", err.Error()
		return ah
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		ah.Status, ah.Error = "UNREACHABLE", err.Error()
		return ah
	}
	ah.Status = resp.GetStatus().String()
	return ah
}
