package bench_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

// modes are the stage-log modes the harness measures.
var modes = []string{"all", "failures"}

// tracedMode is the stage-log mode whose backlog runs are also measured
// with tracing on: the one the cost of tracing is judged by.
const tracedMode = "all"

// results is every figure of one run of the harness.
type results struct {
	settings settings
	// machine says where it ran; postgres and nats are the servers'
	// versions.
	machine, postgres, nats string
	// walSettings are the Postgres settings that decide what a write
	// costs in WAL.
	walSettings string
	modes       map[string]*modeResults
	// prefilled is mode all's in-process run into tables that already
	// held settings.prefill telemetry rows.
	prefilled *throughput
	// sampler names the traced runs' sampler and ratio.
	sampler string
}

// modeResults are the figures of one stage-log mode. A nil figure was
// not measured: its run failed.
type modeResults struct {
	inProcess, production *throughput
	// inProcessTraced and productionTraced are the same backlog runs with
	// tracing on; measured in tracedMode only.
	inProcessTraced, productionTraced *throughput
	// morePairs are, by shape, the pairs of untraced and traced backlog
	// runs after the first (the shape's run and its traced run above),
	// with TELEMESH_BENCH_TRACE_PAIRS above 1; they make the median cost
	// of tracing and nothing else.
	morePairs map[string][]tracePair
	// rows is the rows per message the in-process run wrote, by table.
	rows           map[string]float64
	ceiling        *ceiling
	lat2000, lat80 *latency
}

// BenchmarkPipeline measures the pipeline in stage-log modes all and
// failures and prints one table with every figure: for each mode a
// backlog run in the in-process shape, then paced runs at 2,000 msg/s and
// at 80 % of the backlog rate for latency, a backlog run in the production
// shape, and the Postgres-only ceiling; in mode all, each backlog run once
// more with tracing on (OTLP to a sink in the harness), right after its
// untraced run, and with TELEMESH_BENCH_TRACE_PAIRS=N, N-1 more pairs of
// that shape's backlog runs untraced and traced, in ABBA order; with
// TELEMESH_BENCH_PREFILL, one more backlog run of mode all into tables
// already that full. Run it with `make bench` (-benchtime 1x: each run
// once).
func BenchmarkPipeline(b *testing.B) {
	s := currentSettings(b)
	res := &results{settings: s, machine: machine(), modes: map[string]*modeResults{}, sampler: tracingSetting(b)}
	latencyFor := time.Duration(s.latencySeconds) * time.Second
	for _, mode := range modes {
		mr := &modeResults{morePairs: map[string][]tracePair{}}
		res.modes[mode] = mr
		b.Run("mode="+mode, func(b *testing.B) {
			b.Run(inProcess, func(b *testing.B) {
				r := setup(b, nil)
				res.versions(r)
				before := tableCounts(b, r.conn)
				r.start(inProcess, mode)
				mr.inProcess = r.runBacklog(s.messages)
				mr.rows = grown(before, tableCounts(b, r.conn), s.messages)
				reportThroughput(b, mr.inProcess)
				mr.lat2000 = r.runPaced(2000, latencyFor)
				mr.lat80 = r.runPaced(0.8*mr.inProcess.rate(), latencyFor)
				b.ReportMetric(ms(mr.lat2000.p99), "p99-ms-at-2000/s")
				b.ReportMetric(ms(mr.lat80.p99), "p99-ms-at-80%")
			})
			if mode == tracedMode {
				mr.inProcessTraced = backlogRun(b, inProcess+"-traced", inProcess, mode, true, s.messages)
				mr.morePairs[inProcess] = runMorePairs(b, inProcess, mode, s)
			}
			mr.production = backlogRun(b, production, production, mode, false, s.messages)
			if mode == tracedMode {
				mr.productionTraced = backlogRun(b, production+"-traced", production, mode, true, s.messages)
				mr.morePairs[production] = runMorePairs(b, production, mode, s)
			}
			b.Run("postgres-ceiling", func(b *testing.B) {
				if mr.rows != nil {
					if d := sameRows(mr.rows, rowsPerMessage(mode)); d != "" {
						b.Fatalf("the ceiling would not write what the pipeline wrote; change rowShapes in ceiling_test.go: %s", d)
					}
				}
				mr.ceiling = copyCeiling(b, s.messages, mode)
				b.ReportMetric(mr.ceiling.rate(), "msg/s")
				b.ReportMetric(float64(mr.ceiling.wal)/float64(s.messages), "wal-B/msg")
				b.ReportMetric(float64(mr.ceiling.postgres.Microseconds())/float64(s.messages), "postgres-cpu-us/msg")
				b.ReportMetric(0, "ns/op")
			})
		})
	}
	if s.prefill > 0 {
		b.Run(fmt.Sprintf("prefill=%d", s.prefill), func(b *testing.B) {
			b.Run("mode=all", func(b *testing.B) {
				r := setup(b, func(r *rig) { prefill(b, r.db.Pool, r.fleet, s.prefill) })
				res.versions(r)
				r.start(inProcess, "all")
				res.prefilled = r.runBacklog(s.messages)
				reportThroughput(b, res.prefilled)
			})
		})
	}
	res.write(os.Stdout)
}

// versions records the servers' versions.
func (res *results) versions(r *rig) {
	if res.postgres != "" {
		return
	}
	res.nats = r.nc.ConnectedServerVersion()
	res.walSettings = walSettings(r.tb, r.conn)
	if err := r.conn.QueryRow(context.Background(), `show server_version`).Scan(&res.postgres); err != nil {
		res.postgres = "(version unknown: " + err.Error() + ")"
	}
}

func reportThroughput(b *testing.B, r *throughput) {
	b.ReportMetric(r.rate(), "msg/s")
	b.ReportMetric(r.perMessage(r.telemesh), "telemesh-cpu-us/msg")
	b.ReportMetric(r.perMessage(r.nats), "nats-cpu-us/msg")
	if r.postgresLocal {
		b.ReportMetric(r.perMessage(r.postgres), "postgres-cpu-us/msg")
	}
	b.ReportMetric(float64(r.wal)/float64(r.messages), "wal-B/msg")
	// One run of N messages, not an operation timed b.N times.
	b.ReportMetric(0, "ns/op")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// machine describes where the harness ran.
func machine() string {
	return fmt.Sprintf("%d CPUs, %s/%s, %s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}
