package stagelog

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/bound"
	"github.com/telemesh/telemesh/internal/testdb"
)

func TestKeep(t *testing.T) {
	tests := []struct {
		mode   Mode
		rate   float64
		status string
		want   bool
	}{
		{ModeAll, 0, StatusCompleted, true},
		{ModeAll, 0, StatusHalted, true},
		{ModeFailures, 0, StatusCompleted, false},
		{ModeFailures, 0, StatusHalted, true},
		{ModeFailures, 0, StatusDuplicate, true},
		{ModeSampled, 1, StatusCompleted, true},
		{ModeSampled, 0, StatusCompleted, false},
		{ModeSampled, 0, StatusFailed, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%v/%s", tt.mode, tt.rate, tt.status), func(t *testing.T) {
			w, err := New(tt.mode, tt.rate, "x")
			if err != nil {
				t.Fatal(err)
			}
			if got := w.Keep(&Entry{DedupeKey: "k", Status: tt.status}); got != tt.want {
				t.Errorf("Keep = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSampledIsDeterministicAndNearTheRate(t *testing.T) {
	kept := 0
	for i := range 10000 {
		k := fmt.Sprintf("seq:s@1:%d", i)
		a, b := Sampled(k, 0.1), Sampled(k, 0.1)
		if a != b {
			t.Fatalf("Sampled(%q) not deterministic", k)
		}
		if a {
			kept++
		}
	}
	if kept < 800 || kept > 1200 {
		t.Errorf("kept %d of 10000 at rate 0.1", kept)
	}
}

func TestNewRejectsBadSettings(t *testing.T) {
	for _, tt := range []struct {
		mode Mode
		rate float64
	}{{"some", 0.5}, {ModeSampled, 1.5}, {ModeSampled, -0.1}} {
		if _, err := New(tt.mode, tt.rate, "x"); !errors.Is(err, ErrMode) {
			t.Errorf("New(%q, %v) = %v, want ErrMode", tt.mode, tt.rate, err)
		}
	}
}

// TestWriteBoundsWhatAMessageHolds writes entries holding what a hostile
// device can put in them and checks that the one COPY succeeds with every
// column within its bound.
func TestWriteBoundsWhatAMessageHolds(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	w, err := New(ModeAll, 1, "test")
	if err != nil {
		t.Fatal(err)
	}
	w = w.WithLimits(Limits{SnapshotBytes: 4096, PayloadBytes: 64 << 10})
	var long strings.Builder
	for long.Len() < 10<<10 {
		long.WriteString(rand.Text())
	}
	key := "id:devices.meter-01.telemetry:" + long.String()
	quoted := strings.Repeat(`"<&>`, 5000)
	entries := []Entry{
		{Stage: "ingress", Status: StatusHalted, DedupeKey: key, Errors: map[string]any{"reason": "x"}},
		{Stage: "validate", Status: StatusHalted, DedupeKey: "omitted", Input: map[string]any{"subject": "s", "payload": strings.Repeat("z", 65<<10)}},
		{Stage: "validate", Status: StatusHalted, DedupeKey: "cut", Input: map[string]any{"subject": "s", "payload": quoted}},
		{Stage: "derive", Status: StatusUnresolved, DedupeKey: "nan", Errors: map[string]any{"v": math.NaN()}},
		{Stage: "derive", Status: StatusUnresolved, DedupeKey: "raw", Input: json.RawMessage(`{"a": "\u0000"}`), Output: json.RawMessage(`{"a": `)},
		{Stage: "persist", Status: StatusCompleted, DedupeKey: "completed", Input: map[string]any{"payload": "kept only on failures"}, Duration: -time.Second},
	}
	for i := range entries {
		entries[i].MessageID = uuid.New()
	}
	if err := w.Write(ctx, db.Pool, entries); err != nil {
		t.Fatalf("Write: %v", err)
	}
	// Rows are found by message id: a completed row keeps no dedupe key.
	ids := map[string]uuid.UUID{}
	for _, e := range entries {
		ids[e.DedupeKey] = e.MessageID
	}
	row := func(key string) (in, out, errs *string) {
		t.Helper()
		if err := db.Pool.QueryRow(ctx, `select input_snapshot::text, output_snapshot::text, errors::text from ingestion_stage_logs
			where message_id = $1`, ids[key]).Scan(&in, &out, &errs); err != nil {
			t.Fatalf("row %.40q: %v", key, err)
		}
		return in, out, errs
	}
	var stored string
	if err := db.Pool.QueryRow(ctx, `select dedupe_key from ingestion_stage_logs where message_id = $1`, entries[0].MessageID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if len(stored) > bound.MaxKeyBytes || stored != bound.Key(key, bound.MaxKeyBytes) {
		t.Errorf("a 10 KB dedupe key is stored as %d bytes, want it cut and hashed within %d", len(stored), bound.MaxKeyBytes)
	}
	if in, _, _ := row("omitted"); in == nil || *in != fmt.Sprintf(`{"payload": {"bytes": %d, "omitted": true}, "subject": "s"}`, 65<<10) {
		t.Errorf("a payload over the payload limit: input snapshot %v, want its size alone", deref(in))
	}
	in, _, _ := row("cut")
	var marker struct {
		Truncated bool   `json:"truncated"`
		Bytes     int    `json:"bytes"`
		Head      string `json:"head"`
	}
	if in == nil || json.Unmarshal([]byte(*in), &marker) != nil || !marker.Truncated || len(*in) > 4096 ||
		marker.Bytes <= 4096 || !strings.HasPrefix(marker.Head, `{"payload":"\"\u003c\u0026\u003e`) {
		t.Errorf("a snapshot over the snapshot limit is stored as %d bytes: %.200s", len(deref(in).(string)), deref(in))
	}
	if _, _, errs := row("nan"); errs == nil || !strings.Contains(*errs, "unencodable") {
		t.Errorf("errors holding a NaN stored as %v", deref(errs))
	}
	if in, out, _ := row("raw"); in == nil || *in != `{"a": "`+"\uFFFD"+`"}` || out == nil || *out != `{"invalid_json": "{\"a\": "}` {
		t.Errorf("raw snapshots stored as %v and %v", deref(in), deref(out))
	}
	if in, _, _ := row("completed"); in != nil {
		t.Errorf("a completed entry kept its snapshot %s", *in)
	}
}

func deref(s *string) any {
	if s == nil {
		return nil
	}
	return *s
}

// TestBatchCountsEveryRowAndWritesWhatTheModeKeeps writes, in mode
// failures, completed rows a message carried only as counts and a failed
// row in full, and reads the per-minute counts back with their duration
// histograms.
func TestBatchCountsEveryRowAndWritesWhatTheModeKeeps(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	w, err := New(ModeFailures, 0, "test")
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	at := time.Date(2026, 12, 1, 10, 30, 15, 0, time.UTC)
	carried := []*telemetryv1.StageRecord{
		w.Record(&Entry{MessageID: id, Stage: "ingress", Status: StatusCompleted, Duration: 3 * time.Microsecond, At: at}),
		w.Record(&Entry{MessageID: id, Stage: "validate", Status: StatusCompleted, Duration: 40 * time.Microsecond, At: at}),
	}
	for _, r := range carried {
		if !r.GetCountOnly() || r.GetInstance() != "" || r.GetChangeSet() != "" {
			t.Fatalf("a completed row in mode failures is carried as %v, want a count alone", r)
		}
	}
	b := w.Batch()
	b.AddCarried(id, "k", carried...)
	b.Add(&Entry{MessageID: id, DedupeKey: "k", Stage: "persist", Status: StatusFailed, Code: "unstorable",
		Duration: 1000 * time.Microsecond, At: at, Errors: map[string]any{"reason": "x"}})
	if err := b.Write(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	// Twice: the counts add up.
	if err := b.Write(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	var rows int
	if err := db.Pool.QueryRow(ctx, `select count(*) from ingestion_stage_logs where message_id = $1`, id).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 2 {
		t.Errorf("%d stage rows written, want the failed one, twice", rows)
	}
	// The two writes may have gone through different connections, so into
	// different slots: sum them as a reader does.
	sums, hists := map[string]int64{}, map[string][]int64{}
	r, err := db.Pool.Query(ctx, `select stage, status, reason_code, rows, durations from ingestion_stage_counts where minute = $1`, at.Truncate(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var (
			stage, status, code string
			n                   int64
			h                   []int64
		)
		if err := r.Scan(&stage, &status, &code, &n, &h); err != nil {
			t.Fatal(err)
		}
		k := stage + "/" + status + "/" + code
		sums[k] += n
		hists[k] = AddHistograms(hists[k], h)
	}
	got := map[string]string{}
	for k, n := range sums {
		got[k] = fmt.Sprintf("%d p50=%d", n, Percentile(hists[k], 0.5))
	}
	want := map[string]string{
		"ingress/completed/":        "2 p50=3",
		"validate/completed/":       "2 p50=38",
		"persist/failed/unstorable": "2 p50=861",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("counts %v, want %v", got, want)
	}
}

func TestBucketAndPercentile(t *testing.T) {
	for _, tt := range []struct {
		us   int64
		want int
	}{{0, 0}, {1, 1}, {2, 3}, {3, 4}, {4, 5}, {1 << 20, 41}, {1 << 40, Buckets - 1}} {
		if got := Bucket(tt.us); got != tt.want {
			t.Errorf("Bucket(%d) = %d, want %d", tt.us, got, tt.want)
		}
	}
	h := make([]int64, Buckets)
	for us := int64(1); us <= 1000; us++ {
		h[Bucket(us)]++
	}
	for _, tt := range []struct {
		p    float64
		want int64
	}{{0.5, 500}, {0.99, 990}} {
		got := Percentile(h, tt.p)
		if float64(got) < float64(tt.want)/1.42 || float64(got) > float64(tt.want)*1.42 {
			t.Errorf("p%v of 1..1000 = %d, want within 42 %% of %d", tt.p*100, got, tt.want)
		}
	}
	if Percentile(make([]int64, Buckets), 0.5) != 0 {
		t.Errorf("the percentile of an empty histogram is not 0")
	}
}

// A publish retried after it failed is counted among the rows and among
// the repeats, so a reader counts the message once; each minute keeps the
// reason of its latest failure as the example shown beside the count.
func TestCountsKeepRepeatsAndTheLatestExample(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	w, err := New(ModeFailures, 0, "test")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 1, 10, 30, 15, 0, time.UTC)
	id := uuid.New()
	failed := func(attempt int, why string) Entry {
		return Entry{MessageID: id, DedupeKey: "k", Stage: "publish", Status: StatusFailed, Code: "kv_unavailable",
			Attempt: attempt, Repeat: attempt > 1, At: at, Errors: map[string]any{"reason": why}}
	}
	for i, e := range []Entry{failed(1, "kv: first"), failed(2, "kv: second"), failed(3, "kv: third")} {
		if err := w.Write(ctx, db.Pool, []Entry{e}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	var rows, repeats int64
	var example string
	// The three writes may have gone into different slots: sum as a
	// reader does.
	if err := db.Pool.QueryRow(ctx, `select sum(rows), sum(repeats), max(example)
		from ingestion_stage_counts where minute = $1`, at.Truncate(time.Minute)).Scan(&rows, &repeats, &example); err != nil {
		t.Fatal(err)
	}
	if rows != 3 || repeats != 2 {
		t.Errorf("%d rows, %d repeats; want 3 rows of which 2 repeats: one message", rows, repeats)
	}
	if example == "" || !strings.HasPrefix(example, "kv: ") {
		t.Errorf("example %q, want the reason of a failure", example)
	}
	var completed *string
	b := w.Batch()
	b.Add(&Entry{MessageID: id, Stage: "ingress", Status: StatusCompleted, At: at})
	if err := b.Write(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
	if err := db.Pool.QueryRow(ctx, `select max(example) from ingestion_stage_counts where minute = $1 and status = 'completed'`,
		at.Truncate(time.Minute)).Scan(&completed); err != nil {
		t.Fatal(err)
	}
	if completed != nil {
		t.Errorf("a completed row keeps the example %q, want none", *completed)
	}
}

func TestExample(t *testing.T) {
	long := strings.Repeat("é", 200)
	for _, tt := range []struct {
		name, errs, want string
	}{
		{"the reason", `{"reason":"payload is not a JSON object","validation_errors":[]}`, "payload is not a JSON object"},
		{"a reason that is not text", `{"reason":42}`, "42"},
		{"no reason", `{"duplicate_of":"x"}`, `{"duplicate_of":"x"}`},
		{"a null reason", `{"reason":null,"x":1}`, `{"reason":null,"x":1}`},
		{"not an object", `["a"]`, `["a"]`},
		{"cut to the reason width in characters", `{"reason":"` + long + `"}`, strings.Repeat("é", 160)},
		{"invalid text cleaned", "{\"reason\":\"a\x00b\"}", "{\"reason\":\"a\uFFFDb\"}"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Example(tt.errs); got != tt.want {
				t.Errorf("Example(%q) = %q, want %q", tt.errs, got, tt.want)
			}
		})
	}
}
