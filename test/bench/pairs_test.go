package bench_test

import (
	"fmt"
	"slices"
	"testing"
)

// tracePair is one backlog run of a shape with tracing off and one with
// tracing on, run one right after the other. A nil run failed.
type tracePair struct {
	off, on *throughput
}

// pairs are shape's pairs of backlog runs, untraced and traced, in the
// order they ran: the first is the shape's untraced run, whose figures
// the rest of the table shows, and its traced run.
func (mr *modeResults) pairs(shape string) []tracePair {
	first := tracePair{mr.inProcess, mr.inProcessTraced}
	if shape == production {
		first = tracePair{mr.production, mr.productionTraced}
	}
	return append([]tracePair{first}, mr.morePairs[shape]...)
}

// runMorePairs runs pairs 2 to s.tracePairs of shape's backlog runs in
// mode, each run on a fresh database and nats-server, in the order
// [pairOrder] gives.
func runMorePairs(b *testing.B, shape, mode string, s settings) []tracePair {
	var pairs []tracePair
	for k := 2; k <= s.tracePairs; k++ {
		var p tracePair
		for _, traced := range pairOrder(k) {
			name := shape
			if traced {
				name += "-traced"
			}
			// Named after the first pair's runs, so one -bench pattern
			// selects a shape's runs of every pair, and with pair=k a key
			// benchstat can group or ignore.
			r := backlogRun(b, fmt.Sprintf("%s/pair=%d", name, k), shape, mode, traced, s.messages)
			if traced {
				p.on = r
			} else {
				p.off = r
			}
		}
		pairs = append(pairs, p)
	}
	return pairs
}

// pairOrder is whether each run of pair k (counted from 1) is traced, in
// the order they run: untraced first in odd pairs, traced first in even
// ones. Over the pairs the runs go untraced, traced, traced, untraced
// (ABBA), so a machine that gets slower or faster over the benchmark does
// not favour one side.
func pairOrder(k int) [2]bool {
	if k%2 == 1 {
		return [2]bool{false, true}
	}
	return [2]bool{true, false}
}

// backlogRun runs one backlog run of n messages of shape in mode, with
// tracing on when traced, as the sub-benchmark name of b on a fresh
// database and nats-server, reports its figures, and returns them; nil
// when the run failed. The sub-benchmark's cleanup stops the mesh before
// this returns, so a traced run's sink holds every span it will get.
func backlogRun(b *testing.B, name, shape, mode string, traced bool, n int) *throughput {
	b.Helper()
	var r *throughput
	b.Run(name, func(b *testing.B) {
		rig := setup(b, nil)
		if traced {
			rig.startTraced(shape, mode)
		} else {
			rig.start(shape, mode)
		}
		r = rig.runBacklog(n)
		reportThroughput(b, r)
		// The production shape's memory per stage has a goal of its own.
		if shape == production {
			for proc, rss := range r.rss {
				b.ReportMetric(mib(rss), proc+"-peak-rss-MiB")
			}
		}
	})
	return r
}

// pairSummary is what a shape's pairs measured, over the pairs whose two
// runs both finished: medians of each figure and the spread of the ratio
// the cost of tracing is judged by.
type pairSummary struct {
	pairs int
	// ratio is the median of the pairs' traced msg/s over untraced msg/s;
	// minRatio and maxRatio are the lowest and highest of them.
	ratio, minRatio, maxRatio float64
	// rateOff and rateOn are the median msg/s untraced and traced.
	rateOff, rateOn float64
	// cpuOff and cpuOn are the median telemesh CPU µs/msg untraced and
	// traced.
	cpuOff, cpuOn float64
	// spans is the median of the traced runs' spans exported per 1,000
	// messages.
	spans float64
}

// summarize sums pairs up; false when no pair has both runs.
func summarize(pairs []tracePair) (pairSummary, bool) {
	var ratios, rateOff, rateOn, cpuOff, cpuOn, spans []float64
	for _, p := range pairs {
		if p.off == nil || p.on == nil {
			continue
		}
		ratios = append(ratios, p.on.rate()/p.off.rate())
		rateOff = append(rateOff, p.off.rate())
		rateOn = append(rateOn, p.on.rate())
		cpuOff = append(cpuOff, p.off.perMessage(p.off.telemesh))
		cpuOn = append(cpuOn, p.on.perMessage(p.on.telemesh))
		var n int64
		if p.on.sink != nil {
			n = p.on.sink.spans.Load()
		}
		spans = append(spans, 1000*float64(n)/float64(p.on.messages))
	}
	if len(ratios) == 0 {
		return pairSummary{}, false
	}
	return pairSummary{
		pairs:    len(ratios),
		ratio:    median(ratios),
		minRatio: slices.Min(ratios),
		maxRatio: slices.Max(ratios),
		rateOff:  median(rateOff),
		rateOn:   median(rateOn),
		cpuOff:   median(cpuOff),
		cpuOn:    median(cpuOn),
		spans:    median(spans),
	}, true
}

// median is the middle value of xs, or the mean of the two middle ones
// when there is an even number; xs is left as it was. It panics on no
// values, as there is no median of none.
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}
