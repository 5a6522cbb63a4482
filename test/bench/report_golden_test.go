package bench_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/table.golden from the table printed now")

// The table has a row for every figure and a value or a dash for each
// mode; testdata/table.golden shows it for a run whose production run of
// mode failures failed.
func TestTable(t *testing.T) {
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	run := func(shape string, elapsed float64, telemesh map[string]float64, nats, pg float64, wal int64, rss map[string]int64) *throughput {
		r := &throughput{shape: shape, messages: 200_000, elapsed: sec(elapsed), cpu: map[string]time.Duration{},
			nats: sec(nats), postgres: sec(pg), postgresLocal: true, wal: wal, rss: rss}
		for name, c := range telemesh {
			r.cpu[name] = sec(c)
			r.telemesh += sec(c)
		}
		return r
	}
	const mb = 1 << 20
	res := &results{
		settings: settings{messages: 200_000, latencySeconds: 20, prefill: 10_000_000, tracePairs: 1},
		machine:  "2 CPUs, linux/amd64, go1.26.8", postgres: "15.20", nats: "2.15.2",
		walSettings: "full_page_writes on, wal_compression off, max_wal_size 1GB, checkpoint_timeout 5min",
		modes: map[string]*modeResults{
			"all": {
				inProcess: run(inProcess, 35.6, map[string]float64{"telemesh": 34.2}, 8, 32.8, 1_189_800_000,
					map[string]int64{"telemesh": 150 * mb, "nats-server": 60 * mb}),
				production: run(production, 38.1, map[string]float64{"gateway": 5, "validator": 7, "deriver": 9, "persister": 10, "publisher": 8},
					9, 33, 1_200_000_000, map[string]int64{"gateway": 40 * mb, "validator": 45 * mb, "deriver": 48 * mb,
						"persister": 70 * mb, "publisher": 52 * mb, "nats-server": 61 * mb}),
				ceiling: &ceiling{messages: 200_000, elapsed: sec(21.6), postgres: sec(17), local: true, wal: 793_400_000,
					rows: map[string]int{"ingestion_messages": 1, "device_telemetry_logs": 1, "ingestion_stage_logs": 6}},
				lat2000: &latency{rate: 2000, achieved: 1999, messages: 40_000, p50: 41 * time.Millisecond, p99: 180 * time.Millisecond, max: 260 * time.Millisecond},
				lat80:   &latency{rate: 4496, achieved: 3900, messages: 89_920, p50: 900 * time.Millisecond, p99: 2300 * time.Millisecond, max: 2500 * time.Millisecond},
			},
			"failures": {
				inProcess: run(inProcess, 27.4, map[string]float64{"telemesh": 33.8}, 7, 16.8, 505_400_000,
					map[string]int64{"telemesh": 140 * mb, "nats-server": 58 * mb}),
				ceiling: &ceiling{messages: 200_000, elapsed: sec(9), postgres: sec(6.4), local: true, wal: 351_400_000,
					rows: map[string]int{"ingestion_messages": 1, "device_telemetry_logs": 1, "ingestion_stage_logs": 0}},
				lat2000: &latency{rate: 2000, achieved: 2000, messages: 40_000, p50: 8 * time.Millisecond, p99: 31 * time.Millisecond, max: 45 * time.Millisecond},
				lat80:   &latency{rate: 5839, achieved: 5839, messages: 116_780, p50: 95 * time.Millisecond, p99: 420 * time.Millisecond, max: 610 * time.Millisecond},
			},
		},
	}
	res.prefilled = run(inProcess, 41, map[string]float64{"telemesh": 35}, 8, 40, 1_300_000_000, nil)
	res.sampler = "parentbased_traceidratio at 1 %"
	all := res.modes["all"]
	all.inProcessTraced = run(inProcess, 36.5, map[string]float64{"telemesh": 35.2}, 8, 32.9, 1_190_000_000, nil)
	all.inProcessTraced.sink = &traceSink{}
	all.inProcessTraced.sink.spans.Store(15_400)
	all.productionTraced = run(production, 39.3, map[string]float64{"gateway": 5.2, "validator": 7.2, "deriver": 9.3, "persister": 10.2, "publisher": 8.2},
		9, 33, 1_200_000_000, nil)
	all.productionTraced.sink = &traceSink{}
	all.productionTraced.sink.spans.Store(15_600)
	var got bytes.Buffer
	res.write(&got)
	golden := filepath.Join("testdata", "table.golden")
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestTable -update to write it)", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("the table differs from %s (go test -run TestTable -update rewrites it):\n%s", golden, got.String())
	}
}
