package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/health"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/pipelinestate"
)

// errUnhealthy is returned by status when the report lists problems, so
// the command exits 1.
var errUnhealthy = errors.New("unhealthy")

// errPaused is returned, with exit code [pipelinestate.ExitPaused], by
// status and doctor when the global pipeline switch is off and nothing is
// wrong.
var errPaused = errors.New("paused")

// meshFlags are the connection flags status and doctor share.
type meshFlags struct {
	cfg     pipelinestate.Config
	targets map[string]*string
}

// addMeshFlags registers the connection flags on fs.
func addMeshFlags(fs *pflag.FlagSet) *meshFlags {
	m := &meshFlags{cfg: pipelinestate.DefaultConfig(), targets: map[string]*string{}}
	addMeshFileFlag(fs)
	fs.StringVar(&m.cfg.DatabaseURL, "database-url", "", "Postgres URL the stages write to (required unless a running telemesh up gives it)")
	fs.StringVar(&m.cfg.NATSURL, "nats-url", m.cfg.NATSURL, "NATS URL the gateway reads from")
	for _, stage := range health.Stages {
		m.targets[stage] = fs.String(stage+"-addr", m.cfg.Targets[stage],
			"gRPC target of the "+stage+" stage: host:port, dns:///host:port or a comma-separated list")
	}
	fs.StringVar(&m.cfg.Stream, "stream", m.cfg.Stream, "JetStream stream the gateway consumes")
	fs.StringVar(&m.cfg.Consumer, "consumer", m.cfg.Consumer, "the gateway's durable consumer")
	fs.StringVar(&m.cfg.Bucket, "kv-bucket", m.cfg.Bucket, "the publisher's KV bucket of device states")
	fs.StringVar(&m.cfg.AnalyticsStream, "analytics-stream", m.cfg.AnalyticsStream, "the publisher's analytics stream")
	fs.IntVar(&m.cfg.Minutes, "minutes", m.cfg.Minutes, "how many minutes of stage logs and publish failures to summarise")
	fs.DurationVar(&m.cfg.Timeout, "timeout", m.cfg.Timeout, "time allowed for each single check")
	// The stages' own credentials: mutual TLS for the health calls, NATS
	// authentication for the stream and bucket checks.
	app.RegisterTLSFlags(fs, &m.cfg.TLS, &m.cfg.TLSServerName)
	fs.StringVar(&m.cfg.NATSAuth.User, "nats-user", "", "NATS user name")
	fs.StringVar(&m.cfg.NATSAuth.Password, "nats-password", "", "NATS password")
	fs.StringVar(&m.cfg.NATSAuth.Token, "nats-token", "", "NATS token")
	fs.StringVar(&m.cfg.NATSAuth.NKeyFile, "nats-nkey-file", "", "NATS NKey seed file")
	fs.StringVar(&m.cfg.NATSAuth.CredsFile, "nats-creds-file", "", "NATS credentials (JWT) file")
	config.MarkSecret(fs, "database-url", "nats-url", "nats-password", "nats-token")
	return m
}

// prepare applies the environment and validates the flags.
func (m *meshFlags) prepare(fs *pflag.FlagSet, e env) (pipelinestate.Config, error) {
	if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
		return pipelinestate.Config{}, err
	}
	// A setting given wrong is named whether or not a mesh is found; what
	// the mesh file fills in is checked the same way after.
	if err := m.check(); err != nil {
		return pipelinestate.Config{}, err
	}
	if err := m.locate(fs, e); err != nil {
		return pipelinestate.Config{}, err
	}
	if err := m.check(); err != nil {
		return pipelinestate.Config{}, err
	}
	cfg := m.cfg
	if cfg.DatabaseURL == "" {
		return cfg, requiredDatabaseURL()
	}
	if cfg.NATSURL == "" {
		return cfg, config.Invalid("nats-url", "required")
	}
	cfg.Targets = map[string]string{}
	for _, stage := range health.Stages {
		cfg.Targets[stage] = *m.targets[stage]
	}
	return cfg, nil
}

// check names the first setting that is given and cannot be used.
func (m *meshFlags) check() error {
	cfg := m.cfg
	if cfg.DatabaseURL != "" {
		if _, err := pg.ParseURL(cfg.DatabaseURL); err != nil {
			return config.Invalid("database-url", "%v", err)
		}
	}
	if cfg.Minutes < 1 {
		return config.Invalid("minutes", "%d: must be at least 1", cfg.Minutes)
	}
	if cfg.Timeout <= 0 {
		return config.Invalid("timeout", "%s: must be positive", cfg.Timeout)
	}
	if err := app.CheckTLS(cfg.TLS, cfg.TLSServerName); err != nil {
		return err
	}
	for _, stage := range health.Stages {
		if err := config.CheckTarget(stage+"-addr", *m.targets[stage]); err != nil {
			return err
		}
	}
	return nil
}

func newStatusCmd(e env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the health of every stage, the stream and consumer, the switches and recent throughput",
		Long: `status asks every stage for its gRPC health, reads the JetStream stream and
the gateway's consumer, the pipeline switches, what each stage did over the
last --minutes (the messages it handled by status and reason code, from the
per-minute counts the stages keep beside ingestion_stage_logs, with the text
of the latest of each), the publish_failed rows waiting in the publish outbox
and the parked messages. The viewer's health panel reads the same figures the
same way.

Failures are grouped by a stable reason code (invalid_json, unknown_device,
unknown_topic, required, max, inactive, duplicate, parked, missing_input,
kv_unavailable, ...), so one cause is one line however its texts differ; the
full text stays on each stage-log row. Rows written before codes were
recorded show as unclassified.

A global pipeline switch that is off (telemesh flags set pipeline.enabled off)
is a pause, not a fault: status says since when, by whom and how many messages
wait in the stream. An organization switched off is listed with its parked
messages; it does not pause the mesh.

Addresses and URLs not given by flags or TELEMESH_* variables come from the
mesh file of a running telemesh up (--mesh, TELEMESH_MESH).

Exit codes:
  0  healthy
  1  unhealthy: at least one problem, listed (also while paused)
  2  a bad flag or setting
  6  paused: the global pipeline switch is off and nothing is wrong
  69 no mesh to look at: the mesh file is missing or its up has stopped, or
     there is no file and nothing listens on the default stage addresses`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	mf := addMeshFlags(fs)
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := mf.prepare(fs, e)
		if err != nil {
			return err
		}
		rep, err := pipelinestate.Gather(cmd.Context(), cfg)
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		if asJSON {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(struct {
				*pipelinestate.Report
				Healthy bool `json:"healthy"`
			}{rep, rep.Healthy()}); err != nil {
				return fmt.Errorf("status: %w", err)
			}
		} else if err := printReport(e.stdout, rep); err != nil {
			return fmt.Errorf("status: %w", err)
		}
		switch rep.State {
		case pipelinestate.StateUnhealthy:
			return fmt.Errorf("%w: %d problem(s)", errUnhealthy, len(rep.Problems))
		case pipelinestate.StatePaused:
			return &exitCodeError{code: pipelinestate.ExitPaused, err: fmt.Errorf("status: %w", errPaused)}
		}
		return nil
	}
	return cmd
}

// printReport writes the report as tables.
func printReport(w io.Writer, r *pipelinestate.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STAGE\tTARGET\tSTATUS\tADDRESSES")
	for _, s := range r.Stages {
		var addrs []string
		for _, a := range s.Addresses {
			addrs = append(addrs, a.Address+"="+a.Status)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Stage, s.Target, s.Status, strings.Join(addrs, " "))
	}
	fmt.Fprintln(tw)
	if s := r.Stream; s != nil {
		last := "-"
		if !s.LastTime.IsZero() {
			last = s.LastTime.UTC().Format(time.RFC3339)
		}
		fmt.Fprintln(tw, "STREAM\tSUBJECTS\tMESSAGES\tLAST SEQ\tLAST MESSAGE")
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n\n", s.Name, strings.Join(s.Subjects, ","), s.Messages, s.LastSeq, last)
	}
	if c := r.Consumer; c != nil {
		fmt.Fprintln(tw, "CONSUMER\tSTREAM\tPENDING\tACK PENDING\tREDELIVERED\tWAITING PULLS")
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n\n", c.Name, c.Stream, c.Pending, c.AckPending, c.Redelivered, c.WaitingPulls)
	}
	fmt.Fprintf(tw, "KV BUCKET PRESENT\t%t\nANALYTICS STREAM PRESENT\t%t\n\n", r.BucketPresent, r.AnalyticsPresent)
	if len(r.Switches) > 0 {
		fmt.Fprintln(tw, "SWITCH\tPIPELINE\tANALYTICS\tINVALID EVENTS\tCHANGED")
		for _, s := range r.Switches {
			changed := s.UpdatedAt.UTC().Format(time.RFC3339)
			if s.UpdatedBy != "" {
				changed += " by " + s.UpdatedBy
			}
			fmt.Fprintf(tw, "%s\t%t\t%t\t%t\t%s\n", s.Organization, s.PipelineEnabled, s.PublishAnalytics, s.PublishInvalidEvents, changed)
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintf(tw, "LAST %d MIN\tSTATUS\tCOUNT\tREASON\tEXAMPLE\n", r.Minutes)
	for _, c := range r.Throughput {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", c.Stage, c.Status, c.Count, c.Code, c.Example)
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "PUBLISH FAILED\t%d (%d in the last %d min)\nPARKED\t%d\n", r.PublishFailed, r.PublishFailedRecent, r.Minutes, r.Parked)
	for _, rc := range r.PublishFailedReasons {
		fmt.Fprintf(tw, "  %s\n", pipelinestate.ReasonLine(rc))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	switch r.State {
	case pipelinestate.StateUnhealthy:
		fmt.Fprintln(w, "unhealthy:")
		for _, p := range r.Problems {
			fmt.Fprintln(w, "  "+p)
		}
	case pipelinestate.StateHealthy:
		fmt.Fprintln(w, "healthy")
	}
	// A pause is said after the problems, so a fault is read first.
	if r.Pause != nil {
		fmt.Fprintln(w, pipelinestate.PauseLine(r.Pause))
		fmt.Fprintln(w, "  resume with: telemesh flags set pipeline.enabled on")
	}
	for _, o := range r.OrganizationsOff {
		fmt.Fprintln(w, pipelinestate.OrganizationOffLine(o))
	}
	return nil
}
