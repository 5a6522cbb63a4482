package viewer

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/testutil"
)

func TestChangesNeedTheToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.org("acme")
	on := false
	body := map[string]any{"organization": "", "switch": "publish_analytics", "on": on}
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "nope", http.StatusUnauthorized},
		{"a longer wrong token", testToken + "x", http.StatusUnauthorized},
		{"the token", testToken, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out map[string]any
			if got := e.do(http.MethodPost, "/api/switches", tc.token, body, &out); got != tc.want {
				t.Fatalf("status %d, want %d: %v", got, tc.want, out)
			}
		})
	}
	var by string
	var analytics bool
	if err := e.db.Pool.QueryRow(t.Context(), `select publish_analytics, updated_by from pipeline_switches where organization_id is null`).
		Scan(&analytics, &by); err != nil || analytics || by != "viewer" {
		t.Errorf("global publish_analytics %v by %q (%v); want off by viewer", analytics, by, err)
	}
	if got := e.do(http.MethodPost, "/api/auth", testToken, nil, nil); got != http.StatusNoContent {
		t.Errorf("auth with the token: %d, want 204", got)
	}
	// Reading never needs the token.
	for _, path := range []string{"/", "/static/app.js", "/api/meta", "/api/health", "/api/catalog", "/healthz"} {
		if got := e.do(http.MethodGet, path, "", nil, nil); got != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", path, got)
		}
	}
}

func TestReadOnlyWithoutToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.Token = "" })
	var meta struct {
		ReadOnly bool `json:"read_only"`
	}
	e.do(http.MethodGet, "/api/meta", "", nil, &meta)
	if !meta.ReadOnly {
		t.Error("meta says the viewer is not read-only")
	}
	for _, path := range []string{"/api/switches", "/api/publish-failed/retry", "/api/auth"} {
		var out struct {
			Error string `json:"error"`
		}
		// Even a request carrying some token is refused: there is none to
		// compare it with.
		got := e.do(http.MethodPost, path, "anything", map[string]any{"all": true}, &out)
		if got != http.StatusForbidden || !strings.Contains(out.Error, "TELEMESH_VIEWER_TOKEN") || !strings.Contains(out.Error, "read-only") {
			t.Errorf("POST %s: %d %q; want 403 naming TELEMESH_VIEWER_TOKEN and read-only", path, got, out.Error)
		}
	}
}

func TestPageAndHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	res, err := http.Get(e.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	csp := res.Header.Get("Content-Security-Policy")
	if !strings.Contains(string(body), `<script src="/static/app.js"`) || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("page or CSP wrong: CSP %q\n%s", csp, body)
	}
	// Nothing on the page comes from elsewhere.
	for _, name := range []string{"index.html", "app.js", "app.css"} {
		if strings.Contains(string(assets[name].data), "http://") && name != "app.js" || strings.Contains(string(assets[name].data), "https://") {
			t.Errorf("%s refers to another site", name)
		}
	}
	etag := res.Header.Get("ETag")
	req, _ := http.NewRequest(http.MethodGet, e.url+"/", nil)
	req.Header.Set("If-None-Match", etag)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if etag == "" || res.StatusCode != http.StatusNotModified {
		t.Errorf("revalidation with ETag %q: %d, want 304", etag, res.StatusCode)
	}
	if got := e.do(http.MethodGet, "/static/nope.js", "", nil, nil); got != http.StatusNotFound {
		t.Errorf("unknown asset: %d", got)
	}
}

func TestHealthPanel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	acme, globex := e.org("acme"), e.org("globex")
	d1 := e.device(acme, "d1")
	e.exec(`insert into pipeline_switches (organization_id, pipeline_enabled, updated_by) values ($1, false, 'test')`, globex)
	// Rows go through the stage-log writer, as the stages write them: the
	// panel reads their per-minute counts.
	logs, err := stagelog.New(stagelog.ModeAll, 1, "test")
	if err != nil {
		t.Fatal(err)
	}
	write := func(entries ...stagelog.Entry) {
		t.Helper()
		if err := logs.Write(ctx, e.db.Pool, entries); err != nil {
			t.Fatal(err)
		}
	}
	msg := func(status, summary string, ago time.Duration) uuid.UUID {
		id := uuid.Must(uuid.NewV7())
		e.exec(`insert into ingestion_messages (id, organization_id, device_id, source_subject, dedupe_key, status, halted_stage,
				error_summary, received_at)
			values ($1, $2, $3, 'devices.d1.telemetry', $7, $4,
				case when $4 = 'failed_validation' then 'validate' when $4 = 'failed_terminal' then 'ingress' end,
				nullif($5, ''), now() - $6::interval)`, id, acme, d1, status, summary, ago.String(), id.String())
		ingress := stagelog.Entry{MessageID: id, DedupeKey: id.String(), Stage: "ingress", Status: stagelog.StatusCompleted, At: time.Now().Add(-ago)}
		switch status {
		case "failed_terminal":
			ingress.Status = stagelog.StatusHalted
		case "parked":
			ingress.Status, ingress.Code = stagelog.StatusParked, "parked"
		}
		if ingress.Status == stagelog.StatusCompleted || ingress.Status == stagelog.StatusParked {
			write(ingress)
		}
		return id
	}
	// stageLog is the stage-log row of a failure, with its reason code.
	stageLog := func(id uuid.UUID, stage, status, code, reason string, ago time.Duration) {
		write(stagelog.Entry{MessageID: id, DedupeKey: id.String(), Stage: stage, Status: status, Code: code,
			Errors: map[string]any{"reason": reason}, At: time.Now().Add(-ago)})
	}
	failed := func(status, code, summary string, ago time.Duration) {
		id := msg(status, summary, ago)
		stage := map[string]string{"failed_validation": "validate", "failed_terminal": "ingress"}[status]
		stageLog(id, stage, "halted", code, summary, ago)
	}
	telemetry := func(id uuid.UUID, state, reason string, ago time.Duration) {
		e.exec(`insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
				ingestion_message_id, validation_status, processing_state, failure_reason, updated_at)
			values ($1, now() - $5::interval, now() - $5::interval, $2, $3, 'telemetry', $1, 'valid', $4, nullif($6, ''),
				now() - $5::interval)`, id, acme, d1, state, ago.String(), reason)
		if state == "publish_failed" {
			// The publisher keeps it in the outbox, due at its next attempt.
			e.exec(`insert into publish_outbox (id, message_ids, recorded_from, recorded_to, due_at, attempts)
				select gen_random_uuid(), array[id], recorded_at, recorded_at, now() + interval '1 minute', 1
				from device_telemetry_logs where id = $1`, id)
		}
	}
	// In the last five minutes: 6 completed (one publish_failed), 2 invalid,
	// 2 malformed; 40 minutes ago: 10 completed and 5 invalid.
	for i := 0; i < 6; i++ {
		id := msg("completed", "", time.Minute)
		state, reason := "processed", ""
		if i == 0 {
			state, reason = "publish_failed", "kv "+d1.String()+": nats: stream not found"
			stageLog(id, "publish", "failed", "kv_unavailable", reason, time.Minute)
		}
		telemetry(id, state, reason, time.Minute)
	}
	failed("failed_validation", "max", "validation failed: t: max (critical)", 2*time.Minute)
	failed("failed_validation", "max", "validation failed: u: max", 2*time.Minute)
	failed("failed_terminal", "invalid_json", "payload is not a JSON object: unexpected end of JSON input at offset 49", time.Minute)
	failed("failed_terminal", "invalid_json", "payload is not a JSON object: unexpected end of JSON input at offset 51", time.Minute)
	msg("parked", "", time.Minute)
	for i := 0; i < 10; i++ {
		msg("completed", "", 40*time.Minute)
	}
	for i := 0; i < 5; i++ {
		failed("failed_validation", "max", "validation failed: t: max (critical)", 40*time.Minute)
	}
	for i, d := range []int64{100, 200, 300, 400, 10000} {
		write(stagelog.Entry{MessageID: uuid.New(), Stage: "persist", Status: map[bool]string{true: "failed", false: "completed"}[i == 4],
			Duration: time.Duration(d) * time.Microsecond, At: time.Now().Add(-time.Minute)})
	}
	// Old stage rows are outside the window.
	write(stagelog.Entry{MessageID: uuid.New(), Stage: "persist", Status: stagelog.StatusCompleted, Duration: time.Microsecond,
		At: time.Now().Add(-time.Hour)})

	var h Health
	if got := e.do(http.MethodGet, "/api/health", "", nil, &h); got != http.StatusOK {
		t.Fatalf("health: %d", got)
	}
	// 11 messages in five minutes (the parked one counts), 6 failed: the
	// 2 invalid, the 2 malformed, the publish that failed and the row
	// persist failed (a message Postgres refused fails terminally).
	if r := h.Rate5m; r.Messages != 11 || r.Failed != 6 || r.Badge != BadgeHighRisk {
		t.Errorf("5 minutes: %+v; want 6 of 11, High Risk", r)
	}
	// 26 in an hour, 11 failed: 42 %.
	if r := h.Rate1h; r.Messages != 26 || r.Failed != 11 || r.Badge != BadgeHighRisk {
		t.Errorf("1 hour: %+v; want 11 of 26, High Risk", r)
	}
	reasons := map[string]int64{}
	for _, f := range h.Failures5m {
		reasons[f.Stage+"/"+f.Status+"/"+f.Code] = f.Count
		if f.Code == "invalid_json" && !strings.HasPrefix(f.Example, "payload is not a JSON object: unexpected end of JSON input at offset ") {
			t.Errorf("example of invalid_json %q", f.Example)
		}
	}
	// One line per cause whatever the texts; the persist row written
	// without a code is still counted, as unclassified.
	want := map[string]int64{
		"validate/halted/max":           2,
		"ingress/halted/invalid_json":   2,
		"publish/failed/kv_unavailable": 1,
		"persist/failed/unclassified":   1,
	}
	if len(reasons) != len(want) {
		t.Errorf("failures in 5 minutes %v, want %v", reasons, want)
	}
	for k, n := range want {
		if reasons[k] != n {
			t.Errorf("failures[%q] = %d, want %d (all: %v)", k, reasons[k], n, reasons)
		}
	}
	if h.Failures1h[0].Count != 7 || h.Failures1h[0].Stage != "validate" {
		t.Errorf("most frequent failure of the hour %+v, want validate x7", h.Failures1h[0])
	}
	var persist StageStats
	for _, s := range h.Stages {
		if s.Stage == "persist" {
			persist = s
		}
	}
	if len(h.Stages) != 6 || h.Stages[0].Stage != "ingress" || h.Stages[5].Stage != "publish" {
		t.Errorf("stages %+v, want the six in chain order", h.Stages)
	}
	// Durations are read off a histogram of two buckets per doubling.
	near := func(got, want int64) bool {
		return float64(got) > float64(want)/1.42 && float64(got) < float64(want)*1.42
	}
	if persist.Count != 5 || persist.Failed != 1 || !near(persist.P50US, 300) || !near(persist.P99US, 10000) {
		t.Errorf("persist %+v; want 5 rows, 1 failed, p50 about 300, p99 about 10000", persist)
	}
	if h.PublishFailed.Total != 1 || len(h.PublishFailed.Latest) != 1 || h.PublishFailed.Latest[0].Device != "d1" ||
		h.PublishFailed.Latest[0].Organization != "acme" || !strings.Contains(h.PublishFailed.Latest[0].Reason, "stream not found") {
		t.Errorf("publish failed %+v", h.PublishFailed)
	}
	if h.Parked != 1 {
		t.Errorf("parked %d, want 1", h.Parked)
	}
	// The global row, globex's own row, and acme without one (all on).
	if len(h.Switches) != 3 || h.Switches[0].OrganizationID != nil || h.Switches[1].Organization != "acme" || h.Switches[1].Exists ||
		!h.Switches[1].Effective.PipelineEnabled || h.Switches[2].Organization != "globex" || h.Switches[2].Effective.PipelineEnabled {
		t.Errorf("switches %+v", h.Switches)
	}
	// No stream yet: the backlog says so, the rest is still shown.
	if h.Backlog != nil || !strings.Contains(h.Errors["backlog"], "TELEMETRY") {
		t.Errorf("backlog %+v, errors %v; want an error naming the stream", h.Backlog, h.Errors)
	}

	// With the stream and the consumer, the backlog is what waits.
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "TELEMETRY", Subjects: []string{"devices.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateOrUpdateConsumer(ctx, "TELEMETRY", jetstream.ConsumerConfig{Durable: "telemesh-gateway", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := e.js.Publish(ctx, "devices.d1.telemetry", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, testWait, "backlog of 3", func() error {
		var h Health
		e.do(http.MethodGet, "/api/health", "", nil, &h)
		b := h.Backlog
		return holds(b != nil && b.Total == 3 && b.Pending == 3 && b.StreamMessages == 3, "backlog %+v", b)
	})
}

func TestRetryPublishFailed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	acme := e.org("acme")
	d1 := e.device(acme, "d1")
	add := func(state string) uuid.UUID {
		id := uuid.Must(uuid.NewV7())
		e.exec(`insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
				ingestion_message_id, validation_status, processing_state, failure_reason, next_publish_at)
			values ($1, now(), now(), $2, $3, 'telemetry', $1, 'valid', $4, 'nats: timeout', now() + interval '1 hour')`, id, acme, d1, state)
		return id
	}
	// Two rows failed, one was published; the publisher left all three in
	// an outbox entry due in an hour.
	one, two, done := add("publish_failed"), add("publish_failed"), add("processed")
	e.exec(`insert into publish_outbox (id, message_ids, recorded_from, recorded_to, due_at, attempts)
		select gen_random_uuid(), array_agg(id), min(recorded_at), max(recorded_at), now() + interval '1 hour', 1
		from device_telemetry_logs where id = any($1)`, []uuid.UUID{one, two, done})
	// due counts the rows an outbox entry makes due now.
	due := func() int {
		var n int
		if err := e.db.Pool.QueryRow(t.Context(), `select count(distinct m) from publish_outbox, unnest(message_ids) m
			where due_at <= now()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var out struct {
		Rows  int64  `json:"rows"`
		Error string `json:"error"`
	}
	if got := e.do(http.MethodPost, "/api/publish-failed/retry", testToken, map[string]any{"message_ids": []uuid.UUID{one, done}}, &out); got != http.StatusOK || out.Rows != 1 {
		t.Fatalf("retry one: %d %+v; want 200 and 1 row", got, out)
	}
	if n := due(); n != 1 {
		t.Errorf("%d rows due, want 1", n)
	}
	if got := e.do(http.MethodPost, "/api/publish-failed/retry", testToken, map[string]any{"all": true}, &out); got != http.StatusOK || out.Rows != 2 {
		t.Fatalf("retry all: %d %+v; want 200 and 2 rows", got, out)
	}
	for _, bad := range []any{
		map[string]any{},
		map[string]any{"all": true, "message_ids": []uuid.UUID{one}},
		map[string]any{"message_ids": []string{"not-a-uuid"}},
		map[string]any{"unknown": 1},
	} {
		if got := e.do(http.MethodPost, "/api/publish-failed/retry", testToken, bad, &out); got != http.StatusBadRequest {
			t.Errorf("%v: %d %q, want 400", bad, got, out.Error)
		}
	}
	var sw struct {
		Error string `json:"error"`
	}
	if got := e.do(http.MethodPost, "/api/switches", testToken, map[string]any{"switch": "nope", "on": true}, &sw); got != http.StatusBadRequest {
		t.Errorf("unknown switch: %d %q", got, sw.Error)
	}
	if got := e.do(http.MethodPost, "/api/switches", testToken, map[string]any{"organization": "nope", "switch": "pipeline.enabled", "on": true}, &sw); got != http.StatusNotFound {
		t.Errorf("unknown organization: %d %q", got, sw.Error)
	}
	if got := e.do(http.MethodPost, "/api/switches", testToken, map[string]any{"switch": "pipeline.enabled"}, &sw); got != http.StatusBadRequest {
		t.Errorf("no on: %d %q", got, sw.Error)
	}
}

func TestDeviceAndTrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	acme := e.org("acme")
	d1 := e.device(acme, "d1")
	// A derived parameter, so the device says which values are derived.
	e.exec(`insert into derived_parameter_definitions (device_type_topic_id, key, data_type, expression, dependencies)
		select tt.id, 't_f', 'decimal', '{"*": [{"var": "t"}, 1.8]}', '{t}'
		from device_type_topics tt join device_types dt on dt.id = tt.device_type_id where dt.organization_id = $1`, acme)
	if err := e.srv.catalog.Load(ctx); err != nil {
		t.Fatal(err)
	}

	kv, err := e.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "device-states"})
	if err != nil {
		t.Fatal(err)
	}
	state := `{"device_uuid":"` + d1.String() + `","organization":"acme","topics":{"telemetry":{"values":{"t":21.5,"t_f":38.7},"message_id":"m","recorded_at":"2026-01-01T00:00:00Z"}}}`
	if _, err := kv.Put(ctx, d1.String(), []byte(state)); err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for i := 0; i < 3; i++ {
		id := uuid.Must(uuid.NewV7())
		ids = append(ids, id)
		e.exec(`insert into ingestion_messages (id, organization_id, device_id, source_subject, dedupe_key, status, received_at, processed_at)
			values ($1, $2, $3, 'devices.d1.telemetry', 'id:devices.d1.telemetry:m-' || $4::int, 'completed', now(), now())`, id, acme, d1, i)
		e.exec(`insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
				ingestion_message_id, validation_status, processing_state, transformed_values, unresolved_values)
			values ($1, now() - make_interval(secs => 30 - $4::int * 10), now(), $2, $3, 'telemetry', $1, 'valid', 'processed',
				jsonb_build_object('t', 20 + $4::int, 't_f', (20 + $4::int) * 1.8), '{}')`, id, acme, d1, i)
		for _, stage := range []string{"ingress", "validate", "mutate", "derive", "persist", "publish"} {
			e.exec(`insert into ingestion_stage_logs (message_id, stage, status, duration_us, instance) values ($1, $2, 'completed', 10, 'test')`, id, stage)
		}
	}
	invalid := uuid.Must(uuid.NewV7())
	e.exec(`insert into ingestion_messages (id, organization_id, device_id, source_subject, dedupe_key, status, halted_stage, error_summary, received_at)
		values ($1, $2, $3, 'devices.d1.telemetry', 'seq:x', 'failed_validation', 'validate', 'validation failed: t: required (critical)', now())`, invalid, acme, d1)
	e.exec(`insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic, ingestion_message_id,
			validation_status, processing_state, validation_errors)
		values ($1, now(), now(), $2, $3, 'telemetry', $1, 'invalid', 'invalid',
			'[{"parameter": "t", "code": "required", "message": "required value missing at $.t", "critical": true}]')`, invalid, acme, d1)

	var dev struct {
		Device  catalogDevice   `json:"device"`
		State   json.RawMessage `json:"state"`
		History []historyPoint  `json:"history"`
		Invalid []invalidMessage
	}
	for _, ref := range []string{"d1", d1.String()} {
		if got := e.do(http.MethodGet, "/api/devices/"+ref, "", nil, &dev); got != http.StatusOK {
			t.Fatalf("device %s: %d", ref, got)
		}
		if dev.Device.ExternalID != "d1" || dev.Device.Organization != "acme" || strings.Join(dev.Device.Derived["telemetry"], ",") != "t_f" {
			t.Errorf("device %+v", dev.Device)
		}
		if !strings.Contains(string(dev.State), `"t_f":38.7`) {
			t.Errorf("state from the bucket: %s", dev.State)
		}
		if len(dev.History) != 3 || dev.History[0].MessageID != ids[0] || dev.History[2].MessageID != ids[2] {
			t.Errorf("history %+v, want the three rows oldest first", dev.History)
		}
		if len(dev.Invalid) != 1 || dev.Invalid[0].MessageID != invalid || !strings.Contains(string(dev.Invalid[0].Errors), "required value missing") {
			t.Errorf("invalid %+v", dev.Invalid)
		}
	}
	if got := e.do(http.MethodGet, "/api/devices/nope", "", nil, nil); got != http.StatusNotFound {
		t.Errorf("unknown device: %d", got)
	}
	if got := e.do(http.MethodGet, "/api/devices/d1?minutes=0", "", nil, nil); got != http.StatusBadRequest {
		t.Errorf("minutes=0: %d", got)
	}

	var tr struct {
		Trace struct {
			Message struct {
				ID      uuid.UUID `json:"id"`
				Status  string    `json:"status"`
				TraceID string    `json:"trace_id"`
			} `json:"message"`
			StageLogs []struct {
				Stage string `json:"stage"`
			} `json:"stage_logs"`
			Telemetry *struct {
				ProcessingState string `json:"processing_state"`
			} `json:"telemetry"`
		} `json:"trace"`
		Chain  []string `json:"chain"`
		Device string   `json:"device"`
	}
	// The message lookup shows the trace id, which leads to the trace.
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	e.exec(`update ingestion_messages set trace_id = $2 where id = $1`, ids[1], traceID)
	for _, ref := range []string{ids[1].String(), "id:devices.d1.telemetry:m-1"} {
		if got := e.do(http.MethodGet, "/api/trace?ref="+ref, "", nil, &tr); got != http.StatusOK {
			t.Fatalf("trace %s: %d", ref, got)
		}
		if tr.Trace.Message.ID != ids[1] || len(tr.Trace.StageLogs) != 6 || tr.Trace.Telemetry == nil ||
			tr.Trace.Telemetry.ProcessingState != "processed" || len(tr.Chain) != 6 || tr.Device != "d1" || tr.Trace.Message.TraceID != traceID {
			t.Errorf("trace of %s: %+v", ref, tr)
		}
	}
	if got := e.do(http.MethodGet, "/api/trace?ref="+uuid.NewString(), "", nil, nil); got != http.StatusNotFound {
		t.Errorf("unknown message: %d", got)
	}
	if got := e.do(http.MethodGet, "/api/trace?ref=", "", nil, nil); got != http.StatusBadRequest {
		t.Errorf("no ref: %d", got)
	}
}

func TestMetaNamesTheChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var meta struct {
		Stages        []string          `json:"stages"`
		StageServices map[string]string `json:"stage_services"`
		SwitchNames   []string          `json:"switch_names"`
	}
	if got := e.do(http.MethodGet, "/api/meta", "", nil, &meta); got != http.StatusOK {
		t.Fatalf("meta: %d", got)
	}
	var want []string
	for _, s := range pipeline.Stages() {
		want = append(want, string(s))
		if meta.StageServices[string(s)] != string(s.Service()) {
			t.Errorf("stage %s runs in %q, meta says %q", s, s.Service(), meta.StageServices[string(s)])
		}
	}
	if !slices.Equal(meta.Stages, want) {
		t.Errorf("meta's stages %q, want %q", meta.Stages, want)
	}
	if want := []string{"pipeline.enabled", "publish_analytics", "publish_invalid_events"}; !slices.Equal(meta.SwitchNames, want) {
		t.Errorf("meta's switches %q, want %q", meta.SwitchNames, want)
	}
}
