package bench_test

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/telemesh/telemesh/internal/app"
)

// notMeasured fills the cell of a figure whose run failed or did not run.
const notMeasured = "–"

// figure is one row of the table: a label, how to read its value from a
// mode's results, and the goal it is judged by.
type figure struct {
	label  string
	value  func(*modeResults) string
	target string
}

// heading is a row that opens a part of the table.
func heading(label string) figure { return figure{label: label} }

// write prints the table of every figure, then how each was measured.
func (res *results) write(w io.Writer) {
	s := res.settings
	fmt.Fprintf(w, "\ntelemesh pipeline benchmark: %s messages per backlog run, batches of %d, paced latency runs of %d s\n",
		thousands(float64(s.messages)), tuning.batchSize, s.latencySeconds)
	fmt.Fprintf(w, "%s; PostgreSQL %s; nats-server %s (its own process, JetStream file store)\n", res.machine, res.postgres, res.nats)
	fmt.Fprintf(w, "WAL settings: %s\n\n", res.walSettings)

	// Headings stand on their own lines and do not widen the first column.
	rows := [][]string{{"", "mode all", "mode failures", "target (all / failures)"}}
	for _, f := range res.figures() {
		if f.value == nil {
			rows = append(rows, []string{f.label})
			continue
		}
		rows = append(rows, []string{"  " + f.label, cell(f.value, res.modes["all"]), cell(f.value, res.modes["failures"]), f.target})
	}
	var widths [3]int
	for _, r := range rows {
		for i := 0; i < len(widths) && len(r) > 1; i++ {
			widths[i] = max(widths[i], utf8.RuneCountInString(r[i]))
		}
	}
	for _, r := range rows {
		if len(r) == 1 {
			fmt.Fprintln(w, r[0])
			continue
		}
		var b strings.Builder
		for i, c := range r[:3] {
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)+3))
		}
		b.WriteString(r[3])
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	fmt.Fprint(w, `
backlog: every message published at once, as fast as NATS takes them; msg/s is the messages over first
  publish -> last device_telemetry_logs.processed_at. Latency is measured apart, on paced runs.
latency: publish (the JetStream timestamp, = ingestion_messages.received_at) -> processed_at, of the
  paced run's messages only, in the in-process shape.
CPU: user + system time from /proc over the run, per message. telemesh is the stage process(es), the
  harness's own publishing and polling excluded; nats-server runs as its own process; Postgres is this
  run's database's backends and workers plus the server's background processes (WAL writer,
  checkpointer...), which also serve any other database busy on the server.
WAL: pg_current_wal_lsn() before and after the run: cluster-wide, so other databases' writes at the
  same time count too. Full-page images (pg_stat_wal.wal_fpi) are the pages written whole, up to 8 kB
  each, the first time each is changed after a checkpoint: a run that crosses a checkpoint writes more.
peak RSS: VmHWM of each process at the end of its backlog run.
tracing: the same backlog run on a fresh database with OTEL_EXPORTER_OTLP_ENDPOINT set (the sampler
  and ratio of the caller's OTEL_TRACES_SAMPLER(_ARG), else the default); the sink's own CPU is not
  telemesh's. Spans exported are counted once the stages have stopped and flushed.
`)
	if s.tracePairs > 1 {
		fmt.Fprintf(w, `tracing pairs: %d pairs of backlog runs per shape, untraced and traced, each run on a fresh database
  and nats-server, untraced first in odd pairs and traced first in even ones (ABBA), so a drift of the
  machine's speed favours neither; the first pair's untraced runs are the figures above. Each figure is
  the median over the pairs with both runs; traced of untraced is the median of the pairs' ratios and
  min – max their spread.
`, s.tracePairs)
	}
}

// cell is a figure's value for one mode, or notMeasured.
func cell(value func(*modeResults) string, mr *modeResults) string {
	if mr == nil {
		return notMeasured
	}
	return value(mr)
}

// figures are the rows of the table, in order.
func (res *results) figures() []figure {
	s := res.settings
	fs := []figure{
		heading("Postgres-only ceiling: COPY of the rows the pipeline writes, batches of 1000, one connection"),
	}
	for _, shape := range rowShapes {
		fs = append(fs, figure{label: "rows per message: " + shape.table, value: func(mr *modeResults) string {
			if mr.ceiling == nil {
				return notMeasured
			}
			return strconv.Itoa(mr.ceiling.rows[shape.table])
		}})
	}
	fs = append(fs,
		figure{label: "msg/s", value: ceilingValue(func(c *ceiling) string { return thousands(c.rate()) })},
		figure{label: "Postgres CPU µs/msg", value: ceilingValue(func(c *ceiling) string {
			return cpuCell(c.postgres, c.local, c.messages)
		})},
		figure{label: "WAL bytes/msg", value: ceilingValue(func(c *ceiling) string {
			return thousands(float64(c.wal) / float64(c.messages))
		})},
	)
	fs = append(fs, heading("In-process shape: every stage in one process, backlog"))
	fs = append(fs, throughputFigures(func(mr *modeResults) *throughput { return mr.inProcess })...)
	fs = append(fs,
		figure{label: "of the ceiling", value: func(mr *modeResults) string {
			if mr.inProcess == nil || mr.ceiling == nil {
				return notMeasured
			}
			return percent(mr.inProcess.rate() / mr.ceiling.rate())
		}},
		figure{label: "peak RSS telemesh / nats-server", value: func(mr *modeResults) string {
			if mr.inProcess == nil {
				return notMeasured
			}
			return fmt.Sprintf("%.0f / %.0f MiB", mib(mr.inProcess.rss["telemesh"]), mib(mr.inProcess.rss["nats-server"]))
		}},
	)
	// The goals of the production-shape figures are the in-process ones;
	// the ratio rows say how far it is from them.
	fs = append(fs, heading("Production shape: each stage its own `telemesh serve` process, backlog"))
	prod := throughputFigures(func(mr *modeResults) *throughput { return mr.production })
	for i := range prod {
		prod[i].target = ""
	}
	fs = append(fs, prod...)
	fs = append(fs,
		figure{label: "msg/s of the in-process figure", target: "≥ 85 %", value: func(mr *modeResults) string {
			if mr.production == nil || mr.inProcess == nil {
				return notMeasured
			}
			return percent(mr.production.rate() / mr.inProcess.rate())
		}},
		figure{label: "total CPU µs/msg of the in-process figure", target: "≤ 115 %", value: func(mr *modeResults) string {
			if mr.production == nil || mr.inProcess == nil || !mr.production.postgresLocal || !mr.inProcess.postgresLocal {
				return notMeasured
			}
			return percent(float64(mr.production.total()) / float64(mr.inProcess.total()))
		}},
	)
	for _, stage := range app.Stages {
		fs = append(fs, figure{label: "CPU µs/msg " + stage, value: func(mr *modeResults) string {
			if mr.production == nil {
				return notMeasured
			}
			return fmt.Sprintf("%.0f", mr.production.perMessage(mr.production.cpu[stage]))
		}})
	}
	for _, stage := range app.Stages {
		fs = append(fs, figure{label: "peak RSS " + stage, target: "< 64 MiB", value: func(mr *modeResults) string {
			if mr.production == nil {
				return notMeasured
			}
			return fmt.Sprintf("%.1f MiB", mib(mr.production.rss[stage]))
		}})
	}
	fs = append(fs,
		figure{label: "peak RSS nats-server", value: func(mr *modeResults) string {
			if mr.production == nil {
				return notMeasured
			}
			return fmt.Sprintf("%.1f MiB", mib(mr.production.rss["nats-server"]))
		}},
	)
	fs = append(fs, res.tracingFigures()...)
	fs = append(fs,
		heading(fmt.Sprintf("Latency publish -> processed, paced for %d s, in-process shape", s.latencySeconds)),
		figure{label: "at 2,000 msg/s: p50 / p99 / max", target: "p99 < 50 ms", value: func(mr *modeResults) string {
			return latencyCell(mr.lat2000)
		}},
		figure{label: "80 % of the backlog rate: msg/s", value: func(mr *modeResults) string {
			if mr.lat80 == nil {
				return notMeasured
			}
			return thousands(mr.lat80.rate)
		}},
		figure{label: "at 80 %: p50 / p99 / max", target: "p99 < 500 ms", value: func(mr *modeResults) string {
			return latencyCell(mr.lat80)
		}},
	)
	if s.prefill > 0 {
		fs = append(fs,
			heading(fmt.Sprintf("Tables already holding %s telemetry rows (with their messages and stage rows): in-process, mode all",
				thousands(float64(s.prefill)))),
		)
		// Every figure of the backlog run, so that a reader sees where a
		// slower run went: CPU, and the WAL of pages changed for the first
		// time since the prefill's checkpoint.
		for _, f := range throughputFigures(func(mr *modeResults) *throughput {
			if mr != res.modes["all"] {
				return nil
			}
			return res.prefilled
		}) {
			f.target = ""
			fs = append(fs, f)
		}
		fs = append(fs,
			figure{label: "of the empty-table figure", target: "≥ 85 %", value: func(mr *modeResults) string {
				if mr != res.modes["all"] || res.prefilled == nil || mr.inProcess == nil {
					return notMeasured
				}
				return percent(res.prefilled.rate() / mr.inProcess.rate())
			}},
		)
	} else {
		fs = append(fs, heading("Tables already holding millions of rows: not run (set TELEMESH_BENCH_PREFILL, e.g. 10000000)"))
	}
	return fs
}

// tracingFigures are the rows of the cost of tracing: per shape, its
// untraced and traced backlog runs of the first pair, or, with more than
// one pair asked for, the medians over the pairs and the spread of the
// pairs' ratios.
func (res *results) tracingFigures() []figure {
	pairs := res.settings.tracePairs > 1
	title := "Tracing on: " + res.sampler + ", OTLP/gRPC to a sink in the harness, backlog (tracing off / on)"
	if pairs {
		title += fmt.Sprintf(", medians of %d pairs", res.settings.tracePairs)
	}
	fs := []figure{heading(title)}
	for _, shape := range []string{inProcess, production} {
		summary := func(f func(pairSummary) string) func(*modeResults) string {
			return func(mr *modeResults) string {
				ps, ok := summarize(mr.pairs(shape))
				if !ok {
					return notMeasured
				}
				return f(ps)
			}
		}
		fs = append(fs,
			figure{label: shape + " msg/s", value: summary(func(ps pairSummary) string {
				return thousands(ps.rateOff) + " / " + thousands(ps.rateOn)
			})},
			figure{label: shape + " msg/s traced of untraced", target: "≥ 95 % (all)", value: summary(func(ps pairSummary) string {
				if !pairs {
					return percent(ps.ratio)
				}
				if ps.pairs == 1 {
					return percent(ps.ratio) + " (median of 1 pair)"
				}
				return fmt.Sprintf("%s (median of %d pairs)", percent(ps.ratio), ps.pairs)
			})},
		)
		if pairs {
			fs = append(fs, figure{label: shape + " traced of untraced, min – max", value: summary(func(ps pairSummary) string {
				return percent(ps.minRatio) + " – " + percent(ps.maxRatio)
			})})
		}
		fs = append(fs,
			figure{label: shape + " CPU µs/msg telemesh", value: summary(func(ps pairSummary) string {
				out := fmt.Sprintf("%.0f / %.0f", ps.cpuOff, ps.cpuOn)
				if pairs {
					out += " (" + percent(ps.cpuOn/ps.cpuOff) + ")"
				}
				return out
			})},
			figure{label: shape + " spans exported per 1,000 msg", value: summary(func(ps pairSummary) string {
				return thousands(ps.spans)
			})},
		)
	}
	return fs
}

// throughputFigures are the rows of one shape's backlog run.
func throughputFigures(of func(*modeResults) *throughput) []figure {
	v := func(f func(*throughput) string) func(*modeResults) string {
		return func(mr *modeResults) string {
			if r := of(mr); r != nil {
				return f(r)
			}
			return notMeasured
		}
	}
	return []figure{
		{label: "msg/s", target: "≥ 15,000 / ≥ 20,000", value: v(func(r *throughput) string { return thousands(r.rate()) })},
		{label: "CPU µs/msg telemesh", value: v(func(r *throughput) string { return fmt.Sprintf("%.0f", r.perMessage(r.telemesh)) })},
		{label: "CPU µs/msg nats-server", value: v(func(r *throughput) string { return fmt.Sprintf("%.0f", r.perMessage(r.nats)) })},
		{label: "CPU µs/msg Postgres", value: v(func(r *throughput) string { return cpuCell(r.postgres, r.postgresLocal, r.messages) })},
		{label: "CPU µs/msg total", target: "≤ 130 (all)", value: v(func(r *throughput) string {
			if !r.postgresLocal {
				return notMeasured
			}
			return fmt.Sprintf("%.0f", r.perMessage(r.total()))
		})},
		{label: "WAL bytes/msg", target: "≤ 2,000 / ≤ 1,000", value: v(func(r *throughput) string {
			return thousands(float64(r.wal) / float64(r.messages))
		})},
		{label: "WAL full-page images per 1,000 msg", value: v(func(r *throughput) string {
			return fmt.Sprintf("%.0f (%d checkpoints)", float64(r.fpi)*1000/float64(r.messages), r.checkpoints)
		})},
	}
}

func (r *throughput) total() time.Duration { return r.telemesh + r.nats + r.postgres }

func ceilingValue(f func(*ceiling) string) func(*modeResults) string {
	return func(mr *modeResults) string {
		if mr.ceiling == nil {
			return notMeasured
		}
		return f(mr.ceiling)
	}
}

func cpuCell(d time.Duration, local bool, n int) string {
	if !local {
		return "n/a (server not on this machine)"
	}
	return fmt.Sprintf("%.0f", float64(d.Microseconds())/float64(n))
}

func latencyCell(l *latency) string {
	if l == nil {
		return notMeasured
	}
	out := fmt.Sprintf("%s / %s / %s ms", msCell(l.p50), msCell(l.p99), msCell(l.max))
	if short(l) {
		out += " (published " + thousands(l.achieved) + " msg/s)"
	}
	return out
}

// short reports whether the paced publisher fell behind its rate: the
// latency is then that of a lower rate.
func short(l *latency) bool { return l.achieved < 0.97*l.rate }

func msCell(d time.Duration) string {
	v := ms(d)
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return thousands(v)
}

func percent(f float64) string { return fmt.Sprintf("%.0f %%", 100*f) }

// thousands formats v rounded to a whole number with thousands separators.
func thousands(v float64) string {
	n := int64(math.Round(v))
	sign := ""
	if n < 0 {
		sign, n = "-", -n
	}
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return sign + b.String()
}
