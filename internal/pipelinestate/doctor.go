package pipelinestate

import (
	"context"
	"fmt"
	neturl "net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/health"
)

// Branches of the decision tree and their exit codes.
const (
	BranchNoTelemetry = "no telemetry on the captured subjects"
	BranchPublishing  = "publishing failing"
	BranchHealthy     = "healthy"
	// BranchPaused is a mesh with nothing wrong whose global pipeline
	// switch is off: consumption stopped on purpose.
	BranchPaused = "paused"
	// BranchStagePrefix begins the branch of an unreachable stage:
	// "stage validator unreachable".
	BranchStagePrefix = "stage "

	ExitNoTelemetry = 3
	ExitNotStored   = 4
	ExitPublishing  = 5
	// ExitPaused is the exit code of a paused pipeline, for status and
	// doctor alike: neither healthy (0) nor a fault.
	ExitPaused = 6
)

// DoctorOptions tune the walk of the decision tree.
type DoctorOptions struct {
	// Window is how long the stream and consumer are watched for progress.
	Window time.Duration
	// ExpectSubject, if set, is the subject devices publish on; the stream
	// must capture it.
	ExpectSubject string
}

// Verdict is the branch of the decision tree a mesh is on, why, and what to
// do about it.
type Verdict struct {
	Branch   string   `json:"branch"`
	Evidence []string `json:"evidence"`
	Fix      string   `json:"fix,omitempty"`
	ExitCode int      `json:"exit_code"`
	Report   *Report  `json:"report,omitempty"`
}

// Doctor walks the operational decision tree: is telemetry arriving on the
// captured subjects, are the stages that turn it into rows reachable and
// consuming, and are the rows being published. It returns the first branch
// that fails, or "healthy".
func Doctor(ctx context.Context, cfg Config, opts DoctorOptions) (*Verdict, error) {
	cfg = cfg.withDefaults()
	if opts.Window <= 0 {
		opts.Window = 3 * time.Second
	}
	v := &Verdict{}

	// The first sample of the stream and consumer, before the window.
	var (
		before, after         *StreamInfo
		consBefore, consAfter *ConsumerInfo
		subjBefore, subjAfter uint64
		natsErr               error
	)
	nc, js, err := connectNATS(cfg)
	src := NewReader(nil, js, cfg, nil)
	if err != nil {
		natsErr = err
	} else {
		defer nc.Close()
		before, natsErr = src.Stream(ctx)
		consBefore, _ = src.Consumer(ctx)
		if natsErr == nil && opts.ExpectSubject != "" {
			subjBefore, _ = src.subjectMessages(ctx, opts.ExpectSubject)
		}
		if natsErr == nil {
			select {
			case <-time.After(opts.Window):
			case <-ctx.Done():
				return nil, fmt.Errorf("doctor: %w", ctx.Err())
			}
			after, natsErr = src.Stream(ctx)
			consAfter, _ = src.Consumer(ctx)
			if natsErr == nil && opts.ExpectSubject != "" {
				subjAfter, _ = src.subjectMessages(ctx, opts.ExpectSubject)
			}
		}
	}
	rep, err := Gather(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("doctor: %w", err)
	}
	v.Report = rep

	// 1. Is telemetry arriving on the subjects the stream captures?
	if natsErr != nil {
		v.Branch, v.ExitCode = BranchNoTelemetry, ExitNoTelemetry
		v.Evidence = append(v.Evidence, natsErr.Error())
		v.Fix = fmt.Sprintf("check --nats-url and that the gateway has created stream %s (it does at start)", cfg.Stream)
		return v, nil
	}
	grew := after.LastSeq - before.LastSeq
	v.Evidence = append(v.Evidence, fmt.Sprintf("stream %s captures %s; %d messages, +%d in %s",
		cfg.Stream, strings.Join(after.Subjects, ", "), after.Messages, grew, opts.Window))
	if opts.ExpectSubject != "" {
		if !coveredByAny(after.Subjects, opts.ExpectSubject) {
			v.Branch, v.ExitCode = BranchNoTelemetry, ExitNoTelemetry
			v.Evidence = append(v.Evidence, fmt.Sprintf("subject %s is not captured by stream %s (%s)",
				opts.ExpectSubject, cfg.Stream, strings.Join(after.Subjects, ", ")))
			v.Fix = fmt.Sprintf("publish on a subject the stream captures, or add %s to the gateway's --subjects", opts.ExpectSubject)
			return v, nil
		}
		v.Evidence = append(v.Evidence, fmt.Sprintf("%d messages on %s, +%d in %s",
			subjAfter, opts.ExpectSubject, subjAfter-subjBefore, opts.Window))
		if subjAfter == 0 {
			grew = 0
			after.LastTime = time.Time{}
		}
	}
	recent := !after.LastTime.IsZero() && time.Since(after.LastTime) < time.Duration(cfg.Minutes)*time.Minute
	if !after.LastTime.IsZero() {
		v.Evidence = append(v.Evidence, fmt.Sprintf("last message at %s", after.LastTime.UTC().Format(time.RFC3339)))
	}
	if grew == 0 && !recent {
		v.Branch, v.ExitCode = BranchNoTelemetry, ExitNoTelemetry
		v.Evidence = append(v.Evidence, fmt.Sprintf("nothing arrived in %s nor in the last %d minutes", opts.Window, cfg.Minutes))
		if rep.Pause != nil {
			v.Evidence = append(v.Evidence, PauseLine(rep.Pause))
		}
		v.Fix = "check that devices or `telemesh simulate` publish to this NATS server, on a subject the stream captures (--expect-subject checks one)"
		return v, nil
	}

	// 2. Are rows increasing: consumer bound, next hops reachable, pending
	// moving?
	for _, s := range rep.Stages {
		if s.Status != health.Serving {
			v.Branch, v.ExitCode = BranchStagePrefix+s.Stage+" unreachable", ExitNotStored
			for _, a := range s.Addresses {
				line := fmt.Sprintf("stage %s at %s: %s", s.Stage, a.Address, a.Status)
				if a.Error != "" {
					line += " (" + a.Error + ")"
				}
				v.Evidence = append(v.Evidence, line)
			}
			v.Fix = fmt.Sprintf("start or fix the %s stage (telemesh serve %s), or point --%s-addr at where it runs", s.Stage, s.Stage, s.Stage)
			return v, nil
		}
	}
	v.Evidence = append(v.Evidence, "every stage answers SERVING")
	if consAfter == nil || consAfter.Stream != cfg.Stream {
		v.Branch, v.ExitCode = "consumer "+cfg.Consumer+" missing", ExitNotStored
		if e := rep.Errors["consumer"]; e != "" {
			v.Evidence = append(v.Evidence, e)
		}
		v.Fix = fmt.Sprintf("restart the gateway: it creates durable consumer %s on stream %s", cfg.Consumer, cfg.Stream)
		return v, nil
	}
	v.Evidence = append(v.Evidence, fmt.Sprintf("consumer %s: pending %d, ack pending %d, redelivered %d, waiting pulls %d",
		consAfter.Name, consAfter.Pending, consAfter.AckPending, consAfter.Redelivered, consAfter.WaitingPulls))
	if e := rep.Errors["database"]; e != "" {
		v.Branch, v.ExitCode = "database unreachable", ExitNotStored
		v.Evidence = append(v.Evidence, e)
		v.Fix = "check --database-url and that Postgres is up; the stages cannot write rows without it"
		return v, nil
	}
	// A paused gateway delivers nothing on purpose: the consumer is not
	// stuck. Publishing is still checked, since the retry loop runs while
	// paused and a fault there is a fault.
	if rep.Pause != nil {
		v.Evidence = append(v.Evidence, PauseLine(rep.Pause))
	} else if consBefore != nil && consAfter.Pending > 0 && consAfter.DeliveredSeq == consBefore.DeliveredSeq {
		v.Branch, v.ExitCode = "consumer stuck", ExitNotStored
		v.Evidence = append(v.Evidence, fmt.Sprintf("%d messages pending and nothing delivered in %s", consAfter.Pending, opts.Window))
		v.Fix = "check the gateway's logs; it is not pulling from the consumer"
		return v, nil
	}

	// 3. Are rows processed (published)?
	var pubProblems []string
	if rep.PublishFailedRecent > 0 {
		pubProblems = append(pubProblems, fmt.Sprintf("%d publish_failed rows in the last %d minutes (%d in all)",
			rep.PublishFailedRecent, cfg.Minutes, rep.PublishFailed))
		for _, r := range rep.PublishFailedReasons {
			pubProblems = append(pubProblems, "  "+ReasonLine(r))
		}
	}
	if !rep.BucketPresent {
		pubProblems = append(pubProblems, fmt.Sprintf("KV bucket %s is missing", cfg.Bucket))
	} else if err := probeBucket(ctx, cfg, js); err != nil {
		pubProblems = append(pubProblems, fmt.Sprintf("a test write to KV bucket %s failed: %v", cfg.Bucket, err))
	} else {
		v.Evidence = append(v.Evidence, fmt.Sprintf("a test write to KV bucket %s succeeded", cfg.Bucket))
	}
	if !rep.AnalyticsPresent {
		pubProblems = append(pubProblems, fmt.Sprintf("analytics stream %s is missing", cfg.AnalyticsStream))
	}
	if len(pubProblems) > 0 {
		v.Branch, v.ExitCode = BranchPublishing, ExitPublishing
		v.Evidence = append(v.Evidence, pubProblems...)
		v.Fix = fmt.Sprintf("restore the NATS side the publisher writes to (KV bucket %s, stream %s); "+
			"the retry loop publishes the publish_failed rows once it is back", cfg.Bucket, cfg.AnalyticsStream)
		if !rep.BucketPresent || !rep.AnalyticsPresent {
			v.Fix = missingFix(ctx, cfg, js, rep)
		}
		return v, nil
	}
	v.Evidence = append(v.Evidence, fmt.Sprintf("no publish_failed rows in the last %d minutes; KV bucket %s and stream %s present",
		cfg.Minutes, cfg.Bucket, cfg.AnalyticsStream))
	for _, o := range rep.OrganizationsOff {
		v.Evidence = append(v.Evidence, OrganizationOffLine(o))
	}
	if rep.Pause != nil {
		v.Branch, v.ExitCode = BranchPaused, ExitPaused
		v.Fix = "nothing is wrong; when the pause is over, switch the pipeline back on: telemesh flags set pipeline.enabled on"
		return v, nil
	}
	v.Branch, v.ExitCode = BranchHealthy, 0
	return v, nil
}

// PauseLine says, in one line, since when and by whom the pipeline is
// paused and what waits for it.
func PauseLine(p *Pause) string {
	by := p.By
	if by == "" {
		by = "an unnamed operator"
	}
	return fmt.Sprintf("paused since %s by %s: the global pipeline switch is off; %d messages wait in the stream and are taken when it is switched back on",
		p.Since.UTC().Format(time.RFC3339), by, p.Backlog)
}

// OrganizationOffLine says, in one line, that an organization is switched
// off, since when, by whom and how many of its messages are parked.
func OrganizationOffLine(o OrganizationOff) string {
	by := o.By
	if by == "" {
		by = "an unnamed operator"
	}
	return fmt.Sprintf("organization %s switched off since %s by %s: %d parked messages, resumed when it is switched back on",
		o.Organization, o.Since.UTC().Format(time.RFC3339), by, o.Parked)
}

// coveredByAny reports whether any of the stream's subject patterns
// captures subject (which may itself contain wildcards).
func coveredByAny(patterns []string, subject string) bool {
	for _, p := range patterns {
		if covers(p, subject) {
			return true
		}
	}
	return false
}

// covers reports whether NATS subject pattern p matches every subject s
// matches.
func covers(p, s string) bool {
	pt, st := strings.Split(p, "."), strings.Split(s, ".")
	for i, tok := range pt {
		if tok == ">" {
			return i < len(st)
		}
		if i >= len(st) {
			return false
		}
		switch {
		case st[i] == ">":
			return false
		case tok == "*":
		case tok != st[i]:
			return false
		}
	}
	return len(pt) == len(st)
}

// probeKey is the KV key the doctor writes and purges to test the bucket. It
// cannot clash with a device's key, which is the device's uuid.
const probeKey = "telemesh-doctor-probe"

// probeBucket writes a key to the publisher's KV bucket and purges it, as a
// test publish: a bucket can exist and still refuse writes (storage full,
// no quorum, permissions).
func probeBucket(ctx context.Context, cfg Config, js jetstream.JetStream) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, probeKey, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return err
	}
	return kv.Purge(ctx, probeKey)
}

// missingFix says how to make the publisher's missing bucket or stream
// again. A bucket is made again by kv-rebuild, which also refills it from
// Postgres (a bucket made empty would miss every device that has not
// published since); the stream by the publisher at its start.
func missingFix(ctx context.Context, cfg Config, js jetstream.JetStream, rep *Report) string {
	var fix []string
	if !rep.BucketPresent {
		fix = append(fix, "make the KV bucket again and refill it from Postgres: "+kvRebuildCommand(ctx, cfg, js))
	}
	if !rep.AnalyticsPresent {
		fix = append(fix, fmt.Sprintf("restart the publisher (telemesh serve publisher): it makes stream %s again at start", cfg.AnalyticsStream))
	}
	if rep.PublishFailed > 0 {
		fix = append(fix, fmt.Sprintf("then telemesh replay publish-failed publishes the %d publish_failed rows now rather than at their next retry", rep.PublishFailed))
	}
	return strings.Join(fix, "; ")
}

// kvRebuildCommand is the command that makes cfg's bucket again with the
// publisher's settings and refills it. The replicas are read from the
// analytics stream, which the publisher makes with the same setting, else
// from the gateway's stream. Credentials are left out: the password and
// token come from the environment, as for doctor.
func kvRebuildCommand(ctx context.Context, cfg Config, js jetstream.JetStream) string {
	replicas := 1
	for _, name := range []string{cfg.AnalyticsStream, cfg.Stream} {
		sctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		s, err := js.Stream(sctx, name)
		cancel()
		if err == nil {
			replicas = max(s.CachedInfo().Config.Replicas, 1)
			break
		}
	}
	// A user and password in the URL stay out of what doctor prints.
	servers := strings.Split(cfg.NATSURL, ",")
	for i, s := range servers {
		if u, err := neturl.Parse(strings.TrimSpace(s)); err == nil && u.User != nil {
			u.User = nil
			servers[i] = u.String()
		}
	}
	cmd := fmt.Sprintf("telemesh replay kv-rebuild --nats-url %s --kv-bucket %s --nats-replicas %d",
		strings.Join(servers, ","), cfg.Bucket, replicas)
	switch cfg.NATSAuth.Method() {
	case "nats-creds-file":
		cmd += " --nats-creds-file " + cfg.NATSAuth.CredsFile
	case "nats-nkey-file":
		cmd += " --nats-nkey-file " + cfg.NATSAuth.NKeyFile
	case "nats-password":
		cmd += " --nats-user " + cfg.NATSAuth.User
	}
	return cmd
}

// ReasonLine says, in one line, how many messages one reason code hit and
// the text of the latest: "2 × kv_unavailable (e.g. kv ...: nats: ...)".
func ReasonLine(r ReasonCount) string {
	line := fmt.Sprintf("%d × %s", r.Count, r.Code)
	if r.Example != "" {
		line += " (e.g. " + r.Example + ")"
	}
	return line
}
