package testutil

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDuplicateKeys(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: `{"a":1,"b":{"a":2},"c":[{"a":3}]}`},
		{in: `{"stage":"gateway","msg":"serving","stage":"gateway"}`, want: []string{"stage"}},
		{in: `{"a":{"b":1,"b":2}}`, want: []string{"a.b"}},
		{in: `{"a":[1,{"x":true,"x":null}]}`, want: []string{"a[1].x"}},
		{in: `[{"k":1},{"k":1}]`},
		{in: `{"a":1,"a":2,"a":3}`, want: []string{"a", "a"}},
		{in: `"plain"`},
		{in: `{"a":1`, wantErr: true},
		{in: `{"a":1} {"b":2}`, wantErr: true},
		{in: `level=INFO msg=x`, wantErr: true},
	}
	for _, tt := range tests {
		got, err := DuplicateKeys([]byte(tt.in))
		if (err != nil) != tt.wantErr {
			t.Errorf("DuplicateKeys(%s) err = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("DuplicateKeys(%s) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	start := time.Now()
	calls := 0
	Eventually(t, 30*time.Second, "third call", func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("cond called %d times, want 3", calls)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("took %s for three polls", time.Since(start))
	}
}

// recorder is a testing.TB that keeps what Fatalf was called with instead
// of ending the test.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	// Fatalf ends the goroutine; Eventually must not go on after it.
	panic(r)
}

func TestEventuallyFailsWithTheLastError(t *testing.T) {
	r := &recorder{TB: t}
	func() {
		defer func() {
			if p := recover(); p != nil && p != r {
				panic(p)
			}
		}()
		Eventually(r, 100*time.Millisecond, "never", func() error { return errors.New("still 3 of 5") })
	}()
	if r.failed == "" {
		t.Fatal("Eventually returned for a condition that never held")
	}
	if !strings.Contains(r.failed, "never") || !strings.Contains(r.failed, "still 3 of 5") {
		t.Errorf("failure %q does not say what was awaited and the last error", r.failed)
	}
}

func TestMetric(t *testing.T) {
	page := "# HELP x_total Things.\n# TYPE x_total counter\nx_total{code=\"OK\",name=\"a b\"} 7\nx_total{code=\"Unavailable\"} 2\nup 1\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, page) }))
	defer srv.Close()
	tests := []struct {
		series  string
		want    float64
		wantErr bool
	}{
		{series: `x_total{code="OK",name="a b"}`, want: 7},
		{series: `x_total{code="Unavailable"}`, want: 2},
		{series: "up", want: 1},
		{series: "x_total", wantErr: true},
		{series: "down", wantErr: true},
	}
	for _, tt := range tests {
		got, err := Metric(t.Context(), srv.URL, tt.series)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("Metric(%s) = %v, %v; want %v, error %v", tt.series, got, err, tt.want, tt.wantErr)
		}
	}
}
