package stagelog

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

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
	row := func(key string) (in, out, errs *string) {
		t.Helper()
		if err := db.Pool.QueryRow(ctx, `select input_snapshot::text, output_snapshot::text, errors::text from ingestion_stage_logs
			where dedupe_key = $1`, key).Scan(&in, &out, &errs); err != nil {
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
