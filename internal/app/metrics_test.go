package app

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/telemesh/telemesh/internal/testutil"
)

var updateMetricNames = flag.Bool("update-metric-names", false, "rewrite deploy/charttest/testdata/metric-names.txt from a test mesh's scrape")

// metricNamesFile lists the metric names a test mesh serves; the chart test
// checks the dashboard and the alert rules use no other.
var metricNamesFile = filepath.Join("..", "..", "deploy", "charttest", "testdata", "metric-names.txt")

// TestDomainMetrics runs messages through the mesh and reads every stage's
// /metrics: messages by stage and outcome, dead letters, the outbox, the
// persister's write latency, the Postgres pools and the consumer's state.
// The names it sees are the ones the chart's dashboard and rules may use.
func TestDomainMetrics(t *testing.T) {
	f := newFixture(t, nil)
	f.publish("devices.meter-01.telemetry", `{"temp_c": 10, "humidity": 50}`, "metrics-valid")
	f.publish("devices.meter-01.telemetry", `{"humidity": 50}`, "metrics-invalid")
	f.waitMessages(1, "source_message_id = 'metrics-valid' and status = 'completed'")
	f.waitMessages(1, "source_message_id = 'metrics-invalid' and status = 'failed_validation'")
	f.waitProcessed("source_message_id = 'metrics-valid'")
	f.waitIdle()

	want := map[string]map[string]func(float64) bool{
		Gateway: {
			`telemesh_stage_messages_total{reason="",stage="ingress",status="completed"}`: atLeast(2),
			`telemesh_gateway_consumer_pending`:                                           equal(0),
			`telemesh_gateway_consumer_ack_pending`:                                       equal(0),
			`telemesh_gateway_consumer_redelivered`:                                       equal(0),
			`telemesh_gateway_dead_lettered_total`:                                        equal(0),
			`telemesh_pgxpool_max_connections`:                                            atLeast(1),
		},
		Validator: {
			`telemesh_stage_messages_total{reason="",stage="validate",status="completed"}`:      atLeast(1),
			`telemesh_stage_messages_total{reason="required",stage="validate",status="halted"}`: equal(1),
			`telemesh_pgxpool_acquires_total`:                                                   atLeast(1),
		},
		Deriver: {
			`telemesh_stage_messages_total{reason="",stage="derive",status="completed"}`: atLeast(1),
			`telemesh_stage_messages_total{reason="",stage="mutate",status="completed"}`: atLeast(1),
		},
		Persister: {
			`telemesh_stage_messages_total{reason="",stage="persist",status="completed"}`: atLeast(2),
			`telemesh_persister_write_seconds_count`:                                      atLeast(1),
		},
		Publisher: {
			`telemesh_stage_messages_total{reason="",stage="publish",status="completed"}`: atLeast(1),
			`telemesh_publish_outbox_entries`:                                             equal(0),
			`telemesh_publish_outbox_oldest_seconds`:                                      equal(0),
			`telemesh_publish_outbox_scrape_error`:                                        equal(0),
			`telemesh_publisher_retried_rows_total{result="failed"}`:                      equal(0),
		},
	}
	names := map[string]bool{}
	for _, stage := range Stages {
		var got map[string]float64
		testutil.Eventually(t, meshWait, stage+" metrics", func() error {
			got = scrape(t, f.mesh.Admin[stage])
			for series, ok := range want[stage] {
				v, present := got[series]
				if !present || !ok(v) {
					return fmt.Errorf("%s = %v (present %v)", series, v, present)
				}
			}
			return nil
		})
		for series := range got {
			name, _, _ := strings.Cut(series, "{")
			if strings.HasPrefix(name, "telemesh_") || strings.HasPrefix(name, "grpc_") {
				names[name] = true
			}
		}
	}

	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	if *updateMetricNames {
		if err := os.WriteFile(metricNamesFile, []byte(strings.Join(sorted, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	listed, err := os.ReadFile(metricNamesFile)
	if err != nil {
		t.Fatalf("%v (go test ./internal/app -run TestDomainMetrics -update-metric-names writes it)", err)
	}
	for _, n := range strings.Fields(string(listed)) {
		if !names[n] {
			t.Errorf("%s lists %s, which no stage serves", metricNamesFile, n)
		}
	}
}

func atLeast(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }
func equal(n float64) func(float64) bool   { return func(v float64) bool { return v == n } }
