package bench_test

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
		want float64
	}{
		{"one", []float64{7}, 7},
		{"odd, unsorted", []float64{3, 1, 2}, 2},
		{"even: the mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"an outlier does not move it", []float64{1, 1.1, 0.9, 100, 1.05}, 1.05},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.xs)
			if got := median(in); got != tc.want {
				t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
			}
			if !slices.Equal(in, tc.xs) {
				t.Errorf("median reordered its argument: %v, was %v", in, tc.xs)
			}
		})
	}
}

// Over four pairs the runs go untraced, traced, traced, untraced, twice:
// each side runs first as often as last, and pair 1 runs untraced first,
// as BenchmarkPipeline runs the first pair.
func TestPairOrderIsABBA(t *testing.T) {
	var got []string
	for k := 1; k <= 4; k++ {
		order := pairOrder(k)
		if order[0] == order[1] {
			t.Fatalf("pair %d runs %v: want one untraced and one traced run", k, order)
		}
		for _, traced := range order {
			got = append(got, map[bool]string{false: "off", true: "on"}[traced])
		}
	}
	want := []string{"off", "on", "on", "off", "off", "on", "on", "off"}
	if !slices.Equal(got, want) {
		t.Errorf("the runs of pairs 1 to 4 go %v, want %v", got, want)
	}
}

// pairRun is a backlog run of 10,000 messages at rate msg/s whose
// telemesh used cpu µs per message; a traced one (spans >= 0) exported
// spans.
func pairRun(shape string, rate, cpu float64, spans int64) *throughput {
	const n = 10_000
	r := &throughput{shape: shape, messages: n, postgresLocal: true,
		elapsed:  time.Duration(float64(n) / rate * float64(time.Second)),
		telemesh: time.Duration(cpu*n) * time.Microsecond}
	if spans >= 0 {
		r.sink = &traceSink{}
		r.sink.spans.Store(spans)
	}
	return r
}

// pairedResults is mode all measured with three pairs of in-process runs
// and two of production runs, the second pair's traced run failed, and
// mode failures measured untraced only.
func pairedResults() *results {
	all := &modeResults{
		inProcess:        pairRun(inProcess, 5000, 100, -1),
		inProcessTraced:  pairRun(inProcess, 4000, 130, 700),
		production:       pairRun(production, 5000, 140, -1),
		productionTraced: pairRun(production, 5000, 150, 900),
		morePairs: map[string][]tracePair{
			// The ratios are 80 %, 125 % and 80 %: their median (80 %)
			// is not the ratio of the median rates (5,000 / 5,000).
			inProcess: {
				{off: pairRun(inProcess, 4000, 120, -1), on: pairRun(inProcess, 5000, 110, 800)},
				{off: pairRun(inProcess, 10_000, 110, -1), on: pairRun(inProcess, 8000, 150, 900)},
			},
			production: {{off: pairRun(production, 4000, 140, -1)}},
		},
	}
	return &results{
		settings: settings{messages: 10_000, latencySeconds: 1, tracePairs: 3},
		sampler:  "parentbased_traceidratio at 1 %",
		modes: map[string]*modeResults{
			"all":      all,
			"failures": {inProcess: pairRun(inProcess, 6000, 90, -1), production: pairRun(production, 5500, 100, -1)},
		},
	}
}

// cells maps each row's label to its values in modes all and failures;
// tracing is whether the row is in the tracing part of the table.
func cells(res *results) (rows map[string][2]string, tracing map[string]bool) {
	rows, tracing = map[string][2]string{}, map[string]bool{}
	in := false
	for _, f := range res.figures() {
		if f.value == nil {
			in = strings.HasPrefix(f.label, "Tracing on:")
			continue
		}
		rows[f.label] = [2]string{cell(f.value, res.modes["all"]), cell(f.value, res.modes["failures"])}
		tracing[f.label] = in
	}
	return rows, tracing
}

func TestTracingFiguresOfPairs(t *testing.T) {
	rows, _ := cells(pairedResults())
	for label, want := range map[string][2]string{
		"in-process msg/s":                         {"5,000 / 5,000", notMeasured},
		"in-process msg/s traced of untraced":      {"80 % (median of 3 pairs)", notMeasured},
		"in-process traced of untraced, min – max": {"80 % – 125 %", notMeasured},
		"in-process CPU µs/msg telemesh":           {"110 / 130 (118 %)", notMeasured},
		"in-process spans exported per 1,000 msg":  {"80", notMeasured},
		// The production pair without its traced run is left out.
		"production msg/s":                         {"5,000 / 5,000", notMeasured},
		"production msg/s traced of untraced":      {"100 % (median of 1 pair)", notMeasured},
		"production traced of untraced, min – max": {"100 % – 100 %", notMeasured},
		"production CPU µs/msg telemesh":           {"140 / 150 (107 %)", notMeasured},
		"production spans exported per 1,000 msg":  {"90", notMeasured},
	} {
		if got, ok := rows[label]; !ok {
			t.Errorf("no row %q", label)
		} else if got != want {
			t.Errorf("%s: %q, want %q", label, got, want)
		}
	}
}

// Only the tracing rows change with more pairs; every other figure is the
// first pair's.
func TestMorePairsChangeOnlyTheTracingRows(t *testing.T) {
	paired := pairedResults()
	single := pairedResults()
	single.settings.tracePairs = 1
	single.modes["all"].morePairs = nil
	got, tracing := cells(paired)
	want, _ := cells(single)
	var others int
	for label, w := range want {
		if tracing[label] {
			continue
		}
		others++
		if got[label] != w {
			t.Errorf("%s: %q with three pairs, %q with one", label, got[label], w)
		}
	}
	if others < 20 {
		t.Fatalf("only %d rows outside the tracing part: the test no longer finds it", others)
	}
	if w, g := want["in-process msg/s traced of untraced"][0], got["in-process msg/s traced of untraced"][0]; w != "80 %" || g == w {
		t.Errorf("traced of untraced: %q with one pair (want 80 %%), %q with three", w, g)
	}
}
