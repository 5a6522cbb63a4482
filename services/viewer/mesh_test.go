package viewer

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/simulate"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
	"github.com/telemesh/telemesh/services/publisher"
)

// newMeshEnv starts the demo fleet's mesh and a viewer on it. A failed
// publish waits for a retry asked for rather than for the retry loop's
// backoff, so the tests show what the viewer's retry does.
func newMeshEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, db: testdb.New(t), ns: testnats.New(t)}
	e.nc, e.js = e.ns.Connect(t)
	if err := demo.Seed(t.Context(), e.db.Pool); err != nil {
		t.Fatal(err)
	}
	mesh, err := app.StartMesh(t.Context(), app.MeshOptions{
		DatabaseURL: e.db.URL, NATSURL: e.ns.URL(),
		Tune: func(o *app.Options) {
			o.Process.ShutdownGrace = 5 * time.Second
			o.Gateway.Subjects = demo.Subjects
			o.Gateway.BatchAge = 2 * time.Millisecond
			o.Publisher.RetryEvery = 200 * time.Millisecond
			o.Publisher.RetryBase = time.Hour
			o.Publisher.RetryMax = time.Hour
		},
	}, testLogger())
	if err != nil {
		t.Fatalf("start mesh: %v", err)
	}
	t.Cleanup(func() {
		if err := mesh.Stop(); err != nil {
			t.Errorf("stop mesh: %v", err)
		}
	})
	e.gatewayAdmin = mesh.Admin[app.Gateway]
	testutil.Eventually(t, testWait, "stream TELEMETRY", func() error {
		_, err := e.js.Stream(t.Context(), "TELEMETRY")
		return err
	})
	cfg := testConfig()
	cfg.Env = "local"
	cfg.Targets = map[string]string{}
	for stage, addr := range mesh.GRPC {
		cfg.Targets[stage] = addr
	}
	e.start(cfg)
	testutil.Eventually(t, testWait, "the viewer's catalog", func() error {
		return holds(e.srv.catalog.Snapshot() != nil, "not loaded")
	})
	return e
}

// count runs a count query.
func (e *env) count(sql string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestViewerOnMesh runs the viewer beside a whole mesh: the simulator's
// telemetry reaches a page live with its derived values marked, the raw
// stream shows what arrives, a publish that failed is retried to processed,
// the global switch pauses and resumes consumption, and a message's trace
// has every stage.
func TestViewerOnMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole mesh")
	}
	t.Parallel()
	e := newMeshEnv(t)
	ctx := t.Context()
	waitSubscribed(t, e, "iot.v1.analytics.local.acme.x.telemetry")

	t.Run("live telemetry from the simulator", func(t *testing.T) {
		live := e.openSSE("?device=thermo-01", nil)
		raw := e.openSSE("?raw=1", nil)
		testutil.Eventually(t, testWait, "raw stream on", func() error {
			n := len(e.srv.raw.currentSubjects())
			return holds(n == 2, "%d subjects", n)
		})
		start := time.Now()
		if _, err := simulate.Run(ctx, e.js, simulate.Config{
			Devices: simulate.DemoDevices(0), Count: 28, MessageIDs: true, Seed: 7,
		}, nil); err != nil {
			t.Fatal(err)
		}
		ev, ok := live.next(testWait, kindTelemetry)
		if !ok {
			t.Fatalf("no telemetry of thermo-01 within %s", testWait)
		}
		t.Logf("first telemetry of thermo-01 %s after the simulator started", time.Since(start).Round(time.Millisecond))
		var le liveEvent
		if err := json.Unmarshal([]byte(ev.data), &le); err != nil {
			t.Fatal(err)
		}
		if le.Device != "thermo-01" || le.Organization != "acme" || strings.Join(le.Derived, ",") != "feels_like_f,temp_f" ||
			le.Values["temp_c"] == nil || le.Values["temp_f"] == nil {
			t.Errorf("thermo-01's event %+v", le)
		}
		rev, ok := raw.next(testWait, kindRaw)
		if !ok {
			t.Fatalf("no raw message within %s", testWait)
		}
		var re rawEvent
		if err := json.Unmarshal([]byte(rev.data), &re); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(re.Payload, "message_id") || re.MsgID == "" || !re.Known {
			t.Errorf("raw event %+v", re)
		}
	})

	t.Run("retry turns a publish_failed row processed", func(t *testing.T) {
		if err := e.js.DeleteKeyValue(ctx, "device-states"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.js.Publish(ctx, "devices.aq-01.telemetry", []byte(`{"pm25": 8.5, "co2": 500, "message_id": "retry-me"}`)); err != nil {
			t.Fatal(err)
		}
		var id uuid.UUID
		testutil.Eventually(t, testWait, "a publish_failed row", func() error {
			return e.db.Pool.QueryRow(ctx, `select t.id from device_telemetry_logs t join ingestion_messages m on m.id = t.id
				where m.source_message_id = 'retry-me' and t.processing_state = 'publish_failed'`).Scan(&id)
		})
		var row PublishFailedRow
		testutil.Eventually(t, testWait, "the row in the health panel", func() error {
			var h Health
			e.do(http.MethodGet, "/api/health", "", nil, &h)
			for _, r := range h.PublishFailed.Latest {
				if r.MessageID == id {
					row = r
					return nil
				}
			}
			return fmt.Errorf("%d rows in the panel, not %s", len(h.PublishFailed.Latest), id)
		})
		if !strings.Contains(row.Reason, `KV bucket "device-states"`) || row.Device != "aq-01" || row.Organization != "acme" {
			t.Errorf("row %+v", row)
		}
		if _, err := publisher.Setup(ctx, e.js, publisher.DefaultNATSConfig()); err != nil {
			t.Fatal(err)
		}
		var out struct {
			Rows int `json:"rows"`
		}
		if got := e.do(http.MethodPost, "/api/publish-failed/retry", testToken, map[string]any{"message_ids": []uuid.UUID{id}}, &out); got != http.StatusOK || out.Rows != 1 {
			t.Fatalf("retry: %d %+v", got, out)
		}
		testutil.Eventually(t, testWait, "the row processed", func() error {
			n := e.count(`select count(*) from device_telemetry_logs where id = $1 and processing_state = 'processed'`, id)
			return holds(n == 1, "%d processed", n)
		})
	})

	t.Run("the global switch pauses and resumes consumption", func(t *testing.T) {
		completed := e.count(`select count(*) from ingestion_messages`)
		set := func(on bool) {
			t.Helper()
			if got := e.do(http.MethodPost, "/api/switches", testToken, map[string]any{"switch": "pipeline.enabled", "on": on}, nil); got != http.StatusOK {
				t.Fatalf("switch: %d", got)
			}
		}
		set(false)
		// The gateway sees the switch when it next reads it, which on a
		// busy machine may take a while: wait until it says it paused.
		testutil.Eventually(t, testWait, "the gateway paused", func() error {
			v, err := testutil.Metric(ctx, "http://"+e.gatewayAdmin+"/metrics", "telemesh_gateway_paused")
			if err != nil {
				return err
			}
			return holds(v == 1, "telemesh_gateway_paused %v", v)
		})
		for i := 0; i < 5; i++ {
			if _, err := e.js.Publish(ctx, "devices.thermo-02.telemetry", []byte(`{"temp_c": 20, "humidity": 50}`)); err != nil {
				t.Fatal(err)
			}
		}
		testutil.Eventually(t, testWait, "a backlog of 5", func() error {
			var h Health
			e.do(http.MethodGet, "/api/health", "", nil, &h)
			return holds(h.Backlog != nil && h.Backlog.Total == 5, "backlog %+v", h.Backlog)
		})
		if n := e.count(`select count(*) from ingestion_messages`); n != completed {
			t.Fatalf("%d messages taken while paused", n-completed)
		}
		set(true)
		testutil.Eventually(t, testWait, "the backlog drained", func() error {
			var h Health
			e.do(http.MethodGet, "/api/health", "", nil, &h)
			n := e.count(`select count(*) from ingestion_messages`)
			return holds(h.Backlog != nil && h.Backlog.Total == 0 && n == completed+5, "backlog %+v, %d messages, want %d", h.Backlog, n, completed+5)
		})
	})

	t.Run("trace has every stage", func(t *testing.T) {
		var id uuid.UUID
		if err := e.db.Pool.QueryRow(ctx, `select m.id from ingestion_messages m join device_telemetry_logs t on t.id = m.id
			where m.status = 'completed' and t.processing_state = 'processed' limit 1`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		var tr struct {
			Trace struct {
				StageLogs []struct {
					Stage  string `json:"stage"`
					Status string `json:"status"`
				} `json:"stage_logs"`
			} `json:"trace"`
		}
		if got := e.do(http.MethodGet, "/api/trace?ref="+id.String(), "", nil, &tr); got != http.StatusOK {
			t.Fatalf("trace: %d", got)
		}
		seen := map[string]string{}
		for _, l := range tr.Trace.StageLogs {
			seen[l.Stage] = l.Status
		}
		for _, stage := range pipeline.Stages() {
			if seen[string(stage)] != "completed" {
				t.Errorf("stage %s: %q, want completed (%v)", stage, seen[string(stage)], seen)
			}
		}
	})

	t.Run("stage health", func(t *testing.T) {
		var h Health
		testutil.Eventually(t, testWait, "every stage serving", func() error {
			e.do(http.MethodGet, "/api/health", "", nil, &h)
			if len(h.StageHealth) != 5 {
				return fmt.Errorf("%d stages", len(h.StageHealth))
			}
			for _, s := range h.StageHealth {
				if s.Status != "SERVING" {
					return fmt.Errorf("%+v", s)
				}
			}
			return nil
		})
		if h.Stages[0].Count == 0 || h.Stages[0].P50US == 0 {
			t.Errorf("ingress stats %+v", h.Stages[0])
		}
	})
}
