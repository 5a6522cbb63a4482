package pipelinestate

import (
	"cmp"
	"slices"

	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/stagelog"
)

// Activity is what the stages did over the last Minutes: how many
// messages each handled with each status and reason code.
type Activity struct {
	Minutes int
	// Counts has one element per stage, status and reason code, in chain
	// order, then by status, the largest count first.
	Counts []Count
	// Durations maps a stage to the histogram of its rows' durations
	// (see [stagelog.Bucket]), when they were asked for.
	Durations map[string][]int64
}

// Count is how many messages one stage handled with one status and
// reason code in a window, and the reason of the latest of them.
type Count struct {
	Stage  string `json:"stage"`
	Status string `json:"status"`
	// Code is the reason code (package reason): empty for completed
	// messages, [reason.Unclassified] for those recorded without one.
	Code string `json:"code"`
	// Count counts messages, not attempts: a publish the retry loop
	// tries again after it failed counts once, in the window of its first
	// failure. A count of retries alone (a publish that failed before the
	// window and fails again in it) is kept with a Count of 0, so its
	// reason still shows.
	Count   int64  `json:"count"`
	Example string `json:"example"`
}

// StageStats is what one stage did in a window.
type StageStats struct {
	Stage string `json:"stage"`
	// Count is the messages the stage handled, whatever the stage-log mode
	// wrote of them.
	Count     int64   `json:"count"`
	PerSecond float64 `json:"per_second"`
	// Failed counts those it halted or failed.
	Failed int64 `json:"failed"`
	// P50US and P99US are read off a histogram with two buckets per
	// doubling, so they are within about 40 % of the exact figures.
	P50US int64 `json:"p50_us"`
	P99US int64 `json:"p99_us"`
}

// sortCounts orders counts as [Activity.Counts] are: by stage in chain
// order, status, the largest count first, then code.
func sortCounts(counts []Count) {
	slices.SortStableFunc(counts, func(a, b Count) int {
		return cmp.Or(
			cmp.Compare(pipeline.Stage(a.Stage).Order(), pipeline.Stage(b.Stage).Order()),
			cmp.Compare(a.Stage, b.Stage),
			cmp.Compare(a.Status, b.Status),
			cmp.Compare(b.Count, a.Count),
			cmp.Compare(a.Code, b.Code))
	})
}

// failure reports whether a count of status and code is a failure the
// failure tables list: a stage halted or failed the message. A message
// from an inactive device is evidence kept on purpose, not a failure.
func failure(c Count) bool {
	return (c.Status == stagelog.StatusHalted || c.Status == stagelog.StatusFailed) && c.Code != reason.Inactive
}

// endsMessage reports whether the count's messages failed as messages:
// halted or failed where that is the message's end (failed_terminal,
// failed_validation or publish_failed). A mutation that failed leaves
// its value unresolved and the message goes on.
func endsMessage(c Count) bool {
	if !failure(c) {
		return false
	}
	switch pipeline.Stage(c.Stage) {
	case pipeline.Mutate, pipeline.Derive:
		return false
	}
	return true
}

// Received is how many messages the gateway took in the window; a
// delivery that is retried is counted once it ends.
func (a Activity) Received() int64 {
	var n int64
	for _, c := range a.Counts {
		if c.Stage == string(pipeline.Ingress) && c.Status != stagelog.StatusRetrying {
			n += c.Count
		}
	}
	return n
}

// Failed is how many messages failed in the window: halted at ingress
// (malformed, unknown device or topic) or by validation, dead-lettered,
// refused by Postgres, or not published. A publish that failed counts
// even once a retry published it: the window's failure happened.
func (a Activity) Failed() int64 {
	var n int64
	for _, c := range a.Counts {
		if endsMessage(c) {
			n += c.Count
		}
	}
	return n
}

// FailedPercent is [Activity.Failed] as a share of [Activity.Received],
// in percent, at most 100; 0 when nothing was received.
func (a Activity) FailedPercent() float64 {
	received := a.Received()
	if received == 0 {
		return 0
	}
	return min(100, 100*float64(a.Failed())/float64(received))
}

// Failures returns the failures of the window by stage, status and
// reason code, the most frequent first, at most limit of them (no limit
// when limit is 0 or less).
func (a Activity) Failures(limit int) []Count {
	var out []Count
	for _, c := range a.Counts {
		if failure(c) {
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b Count) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Code, b.Code), cmp.Compare(a.Stage, b.Stage))
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// PublishFailures returns the publish failures of the window by reason
// code, the most frequent first, at most limit of them (no limit when
// limit is 0 or less).
func (a Activity) PublishFailures(limit int) []Count {
	var out []Count
	for _, c := range a.Failures(0) {
		if c.Stage == string(pipeline.Publish) && c.Status == stagelog.StatusFailed {
			out = append(out, c)
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// StageStats returns what each stage did in the window, every stage in
// chain order whether or not it did anything, so a table keeps its shape.
func (a Activity) StageStats() []StageStats {
	out := make([]StageStats, 0, len(pipeline.Stages()))
	for _, stage := range pipeline.Stages() {
		st := StageStats{Stage: string(stage)}
		for _, c := range a.Counts {
			if c.Stage != st.Stage {
				continue
			}
			st.Count += c.Count
			if c.Status == stagelog.StatusHalted || c.Status == stagelog.StatusFailed {
				st.Failed += c.Count
			}
		}
		if a.Minutes > 0 {
			st.PerSecond = float64(st.Count) / float64(a.Minutes*60)
		}
		h := a.Durations[st.Stage]
		st.P50US, st.P99US = stagelog.Percentile(h, 0.5), stagelog.Percentile(h, 0.99)
		out = append(out, st)
	}
	return out
}
