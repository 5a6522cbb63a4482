package faults_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// report is what the checker found after one fault.
type report struct {
	fault     string
	published int
	// stored counts published ids with a telemetry row.
	stored int
	// lost are ids NATS acknowledged that have no message row, no
	// telemetry row or no analytics event; each entry says which.
	lost []string
	// duplicated are ids with more than one message row, telemetry row or
	// analytics event.
	duplicated []string
	// unexpected are rows and events for ids never published.
	unexpected []string
	// unprocessed are ids whose message is not completed or whose row is
	// not processed.
	unprocessed []string
	// recovered says whether every row was processed, and the stream
	// drained, in time.
	recovered bool
	// timings are the recovery times the targets judge.
	timings timings
	// notes are facts about the run worth a line (retries, resends).
	notes []string
}

// ok reports whether the fault left nothing lost, duplicated, unexpected
// or unprocessed.
func (r *report) ok() bool {
	return r.recovered && len(r.lost)+len(r.duplicated)+len(r.unexpected)+len(r.unprocessed) == 0
}

// analyticsStream is the stream the publisher's events land in.
const analyticsStream = "TELEMESH_ANALYTICS"

// check compares the published ids with the ingestion_messages and
// device_telemetry_logs rows and the analytics events. The database is the
// fault's own, so every row in it comes from the driver.
func check(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, published []string) (*report, error) {
	r := &report{published: len(published)}
	want := make(map[string]bool, len(published))
	for _, id := range published {
		want[id] = true
	}

	// Message rows, by the device's message id. A row without one (its
	// dedupe key fell back to the stream sequence) was never published
	// by the driver, which always sets it.
	type msgRow struct{ id, source, key, status string }
	rows, err := pool.Query(ctx, `select id::text, coalesce(source_message_id, ''), dedupe_key, status from ingestion_messages`)
	if err != nil {
		return nil, fmt.Errorf("read ingestion_messages: %w", err)
	}
	msgs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (msgRow, error) {
		var m msgRow
		err := row.Scan(&m.id, &m.source, &m.key, &m.status)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("read ingestion_messages: %w", err)
	}
	sourceOf := map[string]string{} // telemesh message id -> device message id
	msgCount := map[string]int{}
	statuses := map[string][]string{}
	for _, m := range msgs {
		sourceOf[m.id] = m.source
		if !want[m.source] {
			r.unexpected = append(r.unexpected, fmt.Sprintf("message row %s (dedupe key %s, %s)", m.id, m.key, m.status))
			continue
		}
		msgCount[m.source]++
		statuses[m.source] = append(statuses[m.source], m.status)
	}

	// Telemetry rows.
	type telRow struct{ msgID, state string }
	rows, err = pool.Query(ctx, `select ingestion_message_id::text, processing_state from device_telemetry_logs`)
	if err != nil {
		return nil, fmt.Errorf("read device_telemetry_logs: %w", err)
	}
	tels, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (telRow, error) {
		var t telRow
		err := row.Scan(&t.msgID, &t.state)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("read device_telemetry_logs: %w", err)
	}
	telCount := map[string]int{}
	states := map[string][]string{}
	for _, t := range tels {
		src, ok := sourceOf[t.msgID]
		if !ok || !want[src] {
			r.unexpected = append(r.unexpected, fmt.Sprintf("telemetry row of message %s (%s)", t.msgID, t.state))
			continue
		}
		telCount[src]++
		states[src] = append(states[src], t.state)
	}

	// Analytics events, grouped by the id they carry (telemesh's message
	// id, also their Nats-Msg-Id).
	events, err := readAnalytics(ctx, js)
	if err != nil {
		return nil, err
	}
	eventCount := map[string]int{}
	for msgID, n := range events {
		src, ok := sourceOf[msgID]
		if !ok || !want[src] {
			r.unexpected = append(r.unexpected, fmt.Sprintf("%d analytics event(s) of message %s", n, msgID))
			continue
		}
		eventCount[src] += n
	}

	for _, id := range published {
		var missing, extra []string
		for _, c := range []struct {
			what string
			n    int
		}{{"message row", msgCount[id]}, {"telemetry row", telCount[id]}, {"analytics event", eventCount[id]}} {
			switch {
			case c.n == 0:
				missing = append(missing, c.what)
			case c.n > 1:
				extra = append(extra, fmt.Sprintf("%d %ss", c.n, c.what))
			}
		}
		if telCount[id] > 0 {
			r.stored++
		}
		if len(missing) > 0 {
			r.lost = append(r.lost, id+" (no "+strings.Join(missing, ", no ")+")")
		}
		if len(extra) > 0 {
			r.duplicated = append(r.duplicated, id+" ("+strings.Join(extra, ", ")+")")
		}
		var not []string
		for _, s := range statuses[id] {
			if s != "completed" {
				not = append(not, "message "+s)
			}
		}
		for _, s := range states[id] {
			if s != "processed" {
				not = append(not, "row "+s)
			}
		}
		if len(not) > 0 {
			r.unprocessed = append(r.unprocessed, id+" ("+strings.Join(not, ", ")+")")
		}
	}
	sort.Strings(r.unexpected)
	return r, nil
}

// readAnalytics reads every message of the analytics stream and counts
// them by message id.
func readAnalytics(ctx context.Context, js jetstream.JetStream) (map[string]int, error) {
	out := map[string]int{}
	err := eachAnalytics(ctx, js, func(id string) error {
		out[id]++
		return nil
	}, func() error {
		clear(out)
		return nil
	})
	return out, err
}

// callbackError is an error of eachAnalytics' fn, which ends the read.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }
func (e callbackError) Unwrap() error { return e.err }

// eachAnalytics calls fn with the message id of every message of the
// analytics stream (telemesh's message id, also its Nats-Msg-Id). A read
// that NATS breaks off (on a cluster whose servers just restarted, the
// reading consumer's server may not be reachable yet) is started again
// from the beginning, after restart has undone what fn did.
func eachAnalytics(ctx context.Context, js jetstream.JetStream, fn func(id string) error, restart func() error) error {
	const attempts = 5
	for attempt := 1; ; attempt++ {
		err := readAnalyticsOnce(ctx, js, fn)
		var cbErr callbackError
		if err == nil || ctx.Err() != nil || errors.As(err, &cbErr) || attempt == attempts {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(2 * time.Second):
		}
		if err := restart(); err != nil {
			return err
		}
	}
}

// readAnalyticsOnce reads the analytics stream once, from the beginning.
func readAnalyticsOnce(ctx context.Context, js jetstream.JetStream, fn func(id string) error) error {
	return readStreamOnce(ctx, js, analyticsStream, func(m jetstream.Msg) error {
		var ev struct {
			MessageID string `json:"message_id"`
		}
		id := m.Headers().Get("Nats-Msg-Id")
		if err := json.Unmarshal(m.Data(), &ev); err == nil && ev.MessageID != "" {
			if id != "" && id != ev.MessageID {
				return fmt.Errorf("analytics event %s carries message_id %s", id, ev.MessageID)
			}
			id = ev.MessageID
		}
		if err := fn(id); err != nil {
			return callbackError{err}
		}
		return nil
	})
}

// readStreamOnce calls fn with every message of the stream, through one
// ephemeral consumer that acknowledges nothing. On a cluster, a pull sent
// right after the consumer was made may reach a server that does not know
// the consumer yet and come back with no responders; nothing was delivered
// then, so the pull is sent again.
func readStreamOnce(ctx context.Context, js jetstream.JetStream, name string, fn func(jetstream.Msg) error) error {
	stream, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		AckPolicy:         jetstream.AckNonePolicy,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
		Replicas:          1,
	})
	if err != nil {
		return fmt.Errorf("read stream %s: %w", name, err)
	}
	defer func() { _ = stream.DeleteConsumer(context.WithoutCancel(ctx), cons.CachedInfo().Name) }()
	unanswered := 0
	for read := uint64(0); read < info.State.Msgs; {
		// Ask for no more than is left, so the fetch returns as soon as
		// it has them rather than at its deadline.
		batch, err := cons.Fetch(int(min(500, info.State.Msgs-read)), jetstream.FetchMaxWait(10*time.Second))
		n := 0
		if err == nil {
			for m := range batch.Messages() {
				n++
				if err := fn(m); err != nil {
					return err
				}
			}
			err = batch.Error()
		}
		read += uint64(n)
		switch {
		case n == 0 && errors.Is(err, nats.ErrNoResponders) && unanswered < 50:
			unanswered++
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			continue
		case err != nil && !errors.Is(err, context.DeadlineExceeded):
			return fmt.Errorf("read stream %s: %w", name, err)
		case n == 0 && ctx.Err() == nil:
			// A pause on a busy machine is not the end: only the
			// caller's deadline is.
			continue
		case n == 0:
			return fmt.Errorf("read stream %s: %d of %d messages read, then nothing: %w", name, read, info.State.Msgs, ctx.Err())
		}
		unanswered = 0
	}
	return nil
}

// table renders the reports as the suite's summary. The times run from
// each fault's moment (see its notes); each carries PASS or FAIL against
// its target.
func table(reports []*report) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "fault\tpublished\tstored\tlost\tduplicated\tunexpected\tunprocessed\tmoving again\ttime to last processed\tlongest wait\t")
	for _, r := range reports {
		cells := []string{"-", "-", "-"}
		if r.timings.measured {
			for i, g := range r.timings.targets() {
				cells[i] = g.cell()
			}
		}
		if !r.recovered {
			cells[1] = "NOT RECOVERED"
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t\n", r.fault, r.published, r.stored,
			len(r.lost), len(r.duplicated), len(r.unexpected), len(r.unprocessed), cells[0], cells[1], cells[2])
	}
	_ = w.Flush()
	for _, r := range reports {
		for _, n := range r.notes {
			fmt.Fprintf(&b, "%s: %s\n", r.fault, n)
		}
	}
	return b.String()
}

// firstFew lists up to ten items and says how many more there are.
func firstFew(items []string) string {
	const show = 10
	if len(items) <= show {
		return strings.Join(items, "; ")
	}
	return strings.Join(items[:show], "; ") + fmt.Sprintf("; and %d more", len(items)-show)
}
