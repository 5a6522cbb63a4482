// Package bench is telemesh's benchmark harness: `make bench` runs its
// BenchmarkPipeline, which drives the whole pipeline with a backlog of
// messages in stage-log modes all and failures and prints one table with
// every figure the performance work is judged by: throughput end to end and
// the Postgres-only ceiling (COPY of the same rows), CPU per message of
// telemesh, nats-server and Postgres measured each on its own, WAL bytes per
// message, publish-to-processed latency at paced rates below capacity, the
// production shape (every stage its own `telemesh serve` process) beside the
// in-process one, each stage process's peak memory, the cost of tracing
// (each shape's backlog run of mode all again, exporting spans over OTLP to
// a sink in the harness; on request, as the median of several pairs of
// untraced and traced runs in ABBA order), and, on request, a run into
// tables that already hold millions of rows.
//
// nats-server always runs as its own process, built from the version go.mod
// pins, so its CPU is counted apart from telemesh's. The in-process shape
// runs every stage in one child process (this test binary, started again),
// so the harness's own publishing and polling are not counted as telemesh's.
//
// The environment variables TELEMESH_BENCH_MESSAGES,
// TELEMESH_BENCH_LATENCY_SECONDS, TELEMESH_BENCH_PREFILL and
// TELEMESH_BENCH_TRACE_PAIRS (how many pairs of untraced and traced backlog
// runs each shape's cost of tracing is the median of; default 1) size the
// runs; README.md describes them and every column of the table.
package bench
