package pipelinestate

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/telemesh/telemesh/internal/health"
	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/tlsx"
)

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

// Report is the state of a mesh at one moment, as `telemesh status`
// shows it.
type Report struct {
	At      time.Time `json:"at"`
	Minutes int       `json:"minutes"`
	// State is [StateHealthy], [StatePaused] or [StateUnhealthy].
	State string `json:"state"`
	// Pause is set while the global pipeline switch is off.
	Pause *Pause `json:"pause,omitempty"`
	// OrganizationsOff are the organizations whose own pipeline switch is
	// off, with their parked messages. They do not pause the mesh.
	OrganizationsOff []OrganizationOff    `json:"organizations_off,omitempty"`
	Stages           []health.StageHealth `json:"stages"`
	Stream           *StreamInfo          `json:"stream,omitempty"`
	Consumer         *ConsumerInfo        `json:"consumer,omitempty"`
	// BucketPresent and AnalyticsPresent say whether the publisher's KV
	// bucket and analytics stream exist.
	BucketPresent    bool `json:"bucket_present"`
	AnalyticsPresent bool `json:"analytics_stream_present"`
	// Switches are the rows of pipeline_switches, the global one first.
	Switches []Switch `json:"switches"`
	// Throughput is what each stage did over the last Minutes.
	Throughput []StageCount `json:"throughput"`
	// PublishFailed counts the publish_failed rows waiting for another
	// attempt; PublishFailedRecent those that failed in the last Minutes.
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

// StageCount is how many messages one stage handled with one status and
// reason code, with the full text of the latest of them.
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

// publishReasons is how many reason codes of publish failures a report
// lists.
const publishReasons = 5

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

// Gather connects to the mesh described by cfg and builds a report. A part
// that cannot be reached is recorded in the report's Errors and Problems;
// only an unusable configuration is returned as an error.
func Gather(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	var creds credentials.TransportCredentials
	if cfg.TLS.Enabled() {
		certs, err := tlsx.New(cfg.TLS, 0, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		creds = certs.ClientCredentials(cfg.TLSServerName)
	}
	errs := map[string]string{}
	src := NewReader(nil, nil, cfg, creds)
	if cfg.NATSURL == "" {
		errs["nats"] = "no NATS URL given"
	} else if nc, js, err := connectNATS(cfg); err != nil {
		errs["nats"] = err.Error()
	} else {
		defer nc.Close()
		src.js = js
	}
	if cfg.DatabaseURL == "" {
		errs["database"] = "no database URL given"
	} else {
		pool, err := pg.Open(ctx, cfg.DatabaseURL, pg.Options{ApplicationName: "telemesh-status", MaxConns: 2})
		if err != nil {
			return nil, fmt.Errorf("database: %w", err)
		}
		defer pool.Close()
		src.pool = pool
	}
	return src.report(ctx, errs), nil
}

// report reads every part of the state and builds the report; errs
// already holds what could not be reached.
func (r *Reader) report(ctx context.Context, errs map[string]string) *Report {
	rep := &Report{At: time.Now().UTC(), Minutes: r.cfg.Minutes, Errors: errs}
	rep.Stages = r.StageHealth(ctx)
	if r.js != nil {
		var err error
		if rep.Stream, err = r.Stream(ctx); err != nil {
			errs["stream"] = err.Error()
		}
		if rep.Consumer, err = r.Consumer(ctx); err != nil {
			errs["consumer"] = err.Error()
		}
		if err := r.bucket(ctx); err != nil {
			errs["bucket"] = err.Error()
		}
		if err := r.analyticsStream(ctx); err != nil {
			errs["analytics_stream"] = err.Error()
		}
		rep.BucketPresent, rep.AnalyticsPresent = errs["bucket"] == "", errs["analytics_stream"] == ""
	}
	var (
		switches []ops.SwitchRow
		parked   map[string]int64
	)
	if r.pool != nil {
		var err error
		switches, parked, err = r.reportDB(ctx, rep)
		if err != nil {
			errs["database"] = err.Error()
		}
	}
	for _, s := range switches {
		if s.Exists {
			rep.Switches = append(rep.Switches, switchOf(s))
		}
	}
	rep.Pause = PauseOf(switches, rep.Consumer)
	rep.OrganizationsOff = OrganizationsOff(switches, parked)
	rep.Problems = problems(rep, r.cfg)
	rep.State = rep.state()
	return rep
}

// reportDB reads the Postgres parts of the report: the switches, what the
// stages did, the outbox and the parked messages. It stops at the first
// part that cannot be read.
func (r *Reader) reportDB(ctx context.Context, rep *Report) ([]ops.SwitchRow, map[string]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 4*r.cfg.Timeout)
	defer cancel()
	switches, err := r.Switches(ctx)
	if err != nil {
		return nil, nil, err
	}
	act, err := r.Activity(ctx, r.cfg.Minutes, false)
	if err != nil {
		return switches, nil, err
	}
	for _, c := range act.Counts {
		rep.Throughput = append(rep.Throughput, StageCount{Stage: c.Stage, Status: c.Status, Code: c.Code, Count: int(c.Count), Example: c.Example})
	}
	ob, err := r.Outbox(ctx, r.cfg.Minutes)
	if err != nil {
		return switches, nil, err
	}
	rep.PublishFailed, rep.PublishFailedRecent = int(ob.PublishFailed), int(ob.Recent)
	// The reasons explain rows that still wait; a failure a retry has
	// published since needs none.
	if rep.PublishFailedRecent > 0 {
		for _, c := range act.PublishFailures(publishReasons) {
			rep.PublishFailedReasons = append(rep.PublishFailedReasons, ReasonCount{Code: c.Code, Count: int(c.Count), Example: c.Example})
		}
	}
	parked, err := r.Parked(ctx)
	if err != nil {
		return switches, nil, err
	}
	for _, n := range parked {
		rep.Parked += int(n)
	}
	return switches, parked, nil
}

// switchOf is the report's row of a switch row.
func switchOf(s ops.SwitchRow) Switch {
	id := ""
	if s.OrganizationID != nil {
		id = s.OrganizationID.String()
	}
	out := Switch{
		Organization: OrganizationName(id, s.Organization), PipelineEnabled: s.Switches.PipelineEnabled,
		PublishAnalytics: s.Switches.PublishAnalytics, PublishInvalidEvents: s.Switches.PublishInvalidEvents, UpdatedBy: s.UpdatedBy,
	}
	if s.UpdatedAt != nil {
		out.UpdatedAt = s.UpdatedAt.UTC()
	}
	return out
}

// PauseOf returns the pause of the global switch row among switches, or
// nil while the pipeline is on. The backlog is the consumer's pending
// count; nil leaves it 0.
func PauseOf(switches []ops.SwitchRow, consumer *ConsumerInfo) *Pause {
	for _, s := range switches {
		if s.OrganizationID != nil || !s.Exists || s.Switches.PipelineEnabled {
			continue
		}
		p := &Pause{By: s.UpdatedBy}
		if s.UpdatedAt != nil {
			p.Since = s.UpdatedAt.UTC()
		}
		if consumer != nil {
			p.Backlog = consumer.Pending
		}
		return p
	}
	return nil
}

// OrganizationsOff returns the organizations whose own pipeline switch is
// off, with their parked messages (by [OrganizationName]).
func OrganizationsOff(switches []ops.SwitchRow, parked map[string]int64) []OrganizationOff {
	var out []OrganizationOff
	for _, s := range switches {
		if s.OrganizationID == nil || !s.Exists || s.Switches.PipelineEnabled {
			continue
		}
		sw := switchOf(s)
		out = append(out, OrganizationOff{Organization: sw.Organization, Since: sw.UpdatedAt, By: sw.UpdatedBy,
			Parked: int(parked[sw.Organization])})
	}
	return out
}

// problems lists what is wrong in r.
func problems(r *Report, cfg Config) []string {
	var out []string
	for _, s := range r.Stages {
		if s.Status != health.Serving {
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
