package browsertest

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/simulate"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
	"github.com/telemesh/telemesh/services/publisher"
	"github.com/telemesh/telemesh/services/viewer"
)

// token is the viewer token the page is unlocked with.
const token = "browser-test-token"

// imagesDir is where the screenshots go, for docs/viewer.md.
var imagesDir = filepath.Join("..", "..", "..", "docs", "images")

// findChromium returns the Chromium the tests drive. A machine without one
// fails the test, naming what installs it: the browser tests are part of
// `make test` and never skip for a missing browser.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TELEMESH_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	t.Fatal("no Chromium found: the viewer's browser tests drive headless Chromium. " +
		"Run `make browser` (it installs Debian's chromium package: apt-get install -y chromium), " +
		"or set TELEMESH_CHROMIUM to a Chromium or Chrome binary")
	return ""
}

// testWait bounds each wait for the page, the browser or the mesh:
// generous, because on a busy machine any of them can take seconds, and a
// passing test never waits it out.
const testWait = 2 * time.Minute

// mesh is the demo fleet's mesh with a viewer, for the browser.
type mesh struct {
	db  *testdb.DB
	ns  *testnats.Server
	js  jetstream.JetStream
	url string
	// gatewayAdmin is the gateway's admin address, for its metrics.
	gatewayAdmin string
}

// startMesh starts the whole mesh on the demo fleet and a viewer with a
// token. A failed publish waits for a retry asked for rather than for the
// retry loop's backoff, so the test shows what the Retry button does.
func startMesh(t *testing.T) *mesh {
	t.Helper()
	ctx := t.Context()
	m := &mesh{db: testdb.New(t), ns: testnats.New(t)}
	_, m.js = m.ns.Connect(t)
	if err := demo.Seed(ctx, m.db.Pool); err != nil {
		t.Fatal(err)
	}
	logger := logging.Discard()
	if os.Getenv("TELEMESH_TEST_LOG") != "" {
		logger, _ = logging.New(os.Stderr, "text", "info")
	}
	stages, err := app.StartMesh(ctx, app.MeshOptions{
		DatabaseURL: m.db.URL, NATSURL: m.ns.URL(),
		Tune: func(o *app.Options) {
			o.Process.ShutdownGrace = 5 * time.Second
			o.Gateway.Subjects = demo.Subjects
			o.Gateway.BatchAge = 2 * time.Millisecond
			o.Publisher.RetryEvery = 200 * time.Millisecond
			o.Publisher.RetryBase = time.Hour
			o.Publisher.RetryMax = time.Hour
		},
	}, logger)
	if err != nil {
		t.Fatalf("start mesh: %v", err)
	}
	t.Cleanup(func() {
		if err := stages.Stop(); err != nil {
			t.Errorf("stop mesh: %v", err)
		}
	})
	m.gatewayAdmin = stages.Admin[app.Gateway]
	testutil.Eventually(t, testWait, "stream TELEMETRY", func() error {
		_, err := m.js.Stream(ctx, "TELEMETRY")
		return err
	})

	nc, err := nats.Connect(m.ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cfg := viewer.DefaultConfig()
	cfg.Listen, cfg.Token, cfg.Env = "127.0.0.1:0", token, "local"
	cfg.HealthEvery, cfg.SlowEvery = 500*time.Millisecond, time.Second
	cfg.Targets = map[string]string{}
	for stage, addr := range stages.GRPC {
		cfg.Targets[stage] = addr
	}
	srv, err := viewer.New(cfg, viewer.Deps{Pool: m.db.Pool, NATS: nc}, logger)
	if err != nil {
		t.Fatal(err)
	}
	vctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(vctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("viewer: %v", err)
		}
	})
	m.url = srv.URL()
	return m
}

// count runs a count query on the mesh's database.
func (m *mesh) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := m.db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// browser is a headless Chromium tab that records what the page writes to
// its console.
type browser struct {
	ctx context.Context

	mu       sync.Mutex
	problems []string
}

// newBrowser starts Chromium with a fresh profile. The flags keep it off
// the network: no QUIC, no background requests, no component updates, no
// sync, no proxy.
func newBrowser(t *testing.T, path string) *browser {
	t.Helper()
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("metrics-recording-only", true),
	)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	b := &browser{ctx: ctx}
	// The first action starts the browser, and binds its life to the
	// context it runs with, so it gets the tab's own; a browser that cannot
	// start fails here with its reason.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium %s: %v", path, err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for msg, err := range messages {
			if err != nil {
				return
			}
			if msg.Type == chromedp.ConsoleError || msg.IsException() {
				b.mu.Lock()
				b.problems = append(b.problems, fmt.Sprintf("%s: %s (%s:%d)", msg.Type, msg, msg.URL, msg.Line+1))
				b.mu.Unlock()
			}
		}
	}()
	return b
}

// consoleProblems returns the errors and exceptions the page logged.
func (b *browser) consoleProblems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.problems...)
}

// do runs actions within d.
func (b *browser) do(t *testing.T, d time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("browser: %v\nconsole: %v", err, b.consoleProblems())
	}
}

// eval evaluates a JavaScript expression and returns its value.
func eval[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, testWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits until a JavaScript expression is true in the page.
func (b *browser) waitJS(t *testing.T, d time.Duration, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d+time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(d)))
	if err != nil {
		t.Fatalf("after %s the page does not show %s (%s): %v\nconsole: %v\npage: %s", d, what, expr, err, b.consoleProblems(), b.visibleText())
	}
}

// visibleText is the text of the tab the page shows, cut to a few
// kilobytes: what a failed wait saw instead of what it waited for.
func (b *browser) visibleText() string {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector('section.tab.active') || document.body).innerText.slice(0, 6000)`))
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return text
}

// screenshot saves what the browser shows as name in docs/images.
func (b *browser) screenshot(t *testing.T, name string, full bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, testWait)
	defer cancel()
	action := chromedp.CaptureScreenshot()
	if full {
		action = chromedp.FullScreenshot(100)
	}
	buf, err := chromedp.Run(ctx, action)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil || img.Bounds().Dx() < 1000 {
		t.Fatalf("screenshot %s is not a page-sized PNG: %v", name, err)
	}
	if err := os.MkdirAll(imagesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(imagesDir, name), buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitCount waits until the query's count is want.
func (m *mesh) waitCount(t *testing.T, want int, what, sql string, args ...any) {
	t.Helper()
	testutil.Eventually(t, testWait, what, func() error {
		if n := m.count(t, sql, args...); n != want {
			return fmt.Errorf("%d, want %d", n, want)
		}
		return nil
	})
}

// jsString quotes s for JavaScript.
func jsString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// TestViewerInBrowser drives the Telemetry Viewer in headless Chromium
// against the demo fleet's whole mesh: live telemetry from the simulator,
// a device's charts with derived and unresolved values, the raw stream, the
// Retry button on a publish that failed, the pipeline switch pausing and
// resuming ingestion, and the message lookup; the page logs no error
// throughout. It saves the screenshots docs/viewer.md shows.
func TestViewerInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mesh and Chromium; -short leaves the browser tests out")
	}
	chromium := findChromium(t)
	m := startMesh(t)
	b := newBrowser(t, chromium)
	ctx := t.Context()

	t.Run("the page loads without console errors", func(t *testing.T) {
		b.do(t, testWait, chromedp.Navigate(m.url))
		b.waitJS(t, testWait, "a live connection", `document.getElementById('conn').textContent === 'live'`)
		b.waitJS(t, testWait, "the demo devices in the filter", `document.querySelectorAll('#f-device option').length === 8`)
		if p := b.consoleProblems(); len(p) > 0 {
			t.Fatalf("console: %v", p)
		}
	})

	t.Run("simulated values appear live", func(t *testing.T) {
		start := time.Now()
		stats, err := simulate.Run(ctx, m.js, simulate.Config{
			Devices: simulate.DemoDevices(0), Count: 21, MessageIDs: true, Seed: 11,
			Faults: simulate.Faults{Invalid: 10},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		b.waitJS(t, testWait, "telemetry of every active device",
			`['thermo-01','thermo-02','main-energy-meter-01','main-energy-meter-02','aq-01','aq-02'].every(d =>
				document.querySelector('#live-table tr[data-kind="telemetry"][data-device="' + d + '"]'))`)
		t.Logf("%d messages sent; every active device's telemetry shown %s after the simulator started",
			stats.Sent.Total(), time.Since(start).Round(time.Millisecond))

		// A known message: temp_c 19.5 is mutated (+2) to 21.5 and temp_f is
		// derived from it; without humidity, feels_like_f is unresolved.
		start = time.Now()
		if _, err := m.js.Publish(ctx, "devices.thermo-01.telemetry", []byte(`{"temp_c": 19.5, "message_id": "browser-1"}`)); err != nil {
			t.Fatal(err)
		}
		b.waitJS(t, testWait, "thermo-01's new values, the derived one marked",
			`[...document.querySelectorAll('#live-table tr[data-device="thermo-01"]')].some(tr =>
				tr.querySelector('.chip[data-key="temp_c"]')?.textContent === 'temp_c 21.5' &&
				tr.querySelector('.chip.derived[data-key="temp_f"]')?.textContent === 'temp_f 70.7' &&
				tr.querySelector('.chip.unresolved[data-key="feels_like_f"]')?.textContent.includes('missing input humidity'))`)
		t.Logf("a published message shown %s after its publish", time.Since(start).Round(time.Millisecond))
	})

	t.Run("a device's latest values, charts, unresolved and invalid messages", func(t *testing.T) {
		// An invalid message of thermo-01: temp_c is required.
		if _, err := m.js.Publish(ctx, "devices.thermo-01.telemetry", []byte(`{"humidity": 40, "message_id": "browser-bad"}`)); err != nil {
			t.Fatal(err)
		}
		// The live table re-renders as messages arrive, so a click can land
		// on a row that is being replaced: click until the panel names the
		// device.
		b.waitJS(t, testWait, "the device panel of thermo-01", `(() => {
			if (document.getElementById('dev-name').textContent === 'thermo-01') return true;
			document.querySelector('#live-table tr[data-device="thermo-01"] td:nth-child(3) button')?.click();
			return false;
		})()`)
		b.waitJS(t, testWait, "the latest values from the KV bucket",
			`document.querySelector('#dev-latest .latest-topic[data-topic="telemetry"] .chip.derived[data-key="temp_f"]') !== null`)
		b.waitJS(t, testWait, "charts, the derived ones marked",
			`document.querySelector('#dev-charts .chart[data-key="temp_c"][data-derived="false"] polyline') !== null &&
			 document.querySelector('#dev-charts .chart[data-key="temp_f"][data-derived="true"] polyline.derived') !== null`)
		b.waitJS(t, testWait, "the unresolved value with its reason",
			`document.getElementById('dev-unresolved').textContent.includes('missing input humidity')`)
		b.waitJS(t, testWait, "the invalid message with its error",
			`document.getElementById('dev-invalid').textContent.includes('required value missing at $.temp_c')`)
	})

	t.Run("the raw pre-ingestion stream", func(t *testing.T) {
		if got := eval[bool](t, b, `document.getElementById('raw-panel').hidden`); !got {
			t.Fatal("the raw stream is shown before it is asked for")
		}
		b.do(t, testWait, chromedp.Click(chromedp.ID("f-raw")))
		b.waitJS(t, testWait, "the raw panel", `!document.getElementById('raw-panel').hidden && document.getElementById('conn').textContent === 'live'`)
		// Send what only the raw stream shows, a payload that is not
		// JSON, until the viewer has subscribed and the page shows it.
		i := 0
		testutil.Eventually(t, testWait, "the raw stream shows a payload that is not JSON", func() error {
			i++
			if _, err := m.js.Publish(ctx, "devices.aq-02.telemetry", fmt.Appendf(nil, `not json %d`, i)); err != nil {
				t.Fatal(err)
			}
			if !eval[bool](t, b, `[...document.querySelectorAll('#raw-table tr[data-subject="devices.aq-02.telemetry"]')].some(tr => tr.textContent.includes('not json'))`) {
				return fmt.Errorf("not shown after %d messages", i)
			}
			return nil
		})
		// Let a little more arrive for the screenshot.
		if _, err := simulate.Run(ctx, m.js, simulate.Config{Devices: simulate.DemoDevices(0), Count: 14, MessageIDs: true, Seed: 12,
			Faults: simulate.Faults{MissingInputs: 20}}, nil); err != nil {
			t.Fatal(err)
		}
		b.waitJS(t, testWait, "the raw messages of the simulator", `document.querySelectorAll('#raw-table tbody tr').length >= 10`)
		time.Sleep(500 * time.Millisecond) // the highlight of new rows fades
		b.screenshot(t, "viewer-live.png", false)
	})

	t.Run("unlock with the token", func(t *testing.T) {
		b.do(t, testWait, chromedp.Navigate(m.url+"#health"))
		b.waitJS(t, testWait, "the health tab", `document.getElementById('tab-health').classList.contains('active') && document.getElementById('conn').textContent === 'live'`)
		b.do(t, testWait,
			chromedp.Click(chromedp.ID("auth-btn")),
			chromedp.WaitVisible(chromedp.ID("token-input")),
			chromedp.SendKeys(chromedp.ID("token-input"), token),
			chromedp.Click(chromedp.ID("token-ok")),
		)
		b.waitJS(t, testWait, "the page unlocked", `document.getElementById('auth-btn').textContent === 'Operator ✓'`)
	})

	t.Run("Retry turns a publish_failed row processed", func(t *testing.T) {
		// Without the bucket, the publish fails after the row is persisted.
		if err := m.js.DeleteKeyValue(ctx, "device-states"); err != nil {
			t.Fatal(err)
		}
		// Two rows fail; one is retried here, the other stays for the
		// health panel's screenshot.
		for _, msgID := range []string{"browser-retry", "browser-left"} {
			if _, err := m.js.Publish(ctx, "devices.aq-01.telemetry", []byte(`{"pm25": 9.5, "co2": 610, "message_id": "`+msgID+`"}`)); err != nil {
				t.Fatal(err)
			}
		}
		var id uuid.UUID
		m.waitCount(t, 2, "two publish_failed rows", `select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.id
				where m.source_message_id like 'browser-%' and t.processing_state = 'publish_failed'`)
		if err := m.db.Pool.QueryRow(ctx, `select id from ingestion_messages where source_message_id = 'browser-retry'`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		if _, err := publisher.Setup(ctx, m.js, publisher.DefaultNATSConfig()); err != nil {
			t.Fatal(err)
		}
		row := `#h-pf tr[data-message-id="` + id.String() + `"]`
		b.waitJS(t, testWait, "the row with its reason and a Retry button",
			`document.querySelector('`+row+` button.retry') !== null && document.querySelector('`+row+`').textContent.includes('KV bucket "device-states"')`)
		b.do(t, testWait, chromedp.Click(chromedp.CSS(row+" button.retry")))
		m.waitCount(t, 1, "the row processed", `select count(*) from device_telemetry_logs where id = $1 and processing_state = 'processed'`, id)
		b.waitJS(t, testWait, "the row gone from the list", `document.querySelector('`+row+`') === null`)
	})

	t.Run("the pipeline switch pauses ingestion and the backlog drains on resume", func(t *testing.T) {
		global := `#h-switches button[data-scope="global"][data-switch="pipeline.enabled"]`
		b.waitJS(t, testWait, "the global pipeline switch on", `document.querySelector('`+global+`')?.dataset.on === 'true'`)
		b.do(t, testWait,
			chromedp.Click(chromedp.CSS(global)),
			chromedp.WaitVisible(chromedp.ID("confirm-ok")),
		)
		if text := eval[string](t, b, `document.getElementById('confirm-text').textContent`); !strings.Contains(text, "pipeline.enabled OFF globally") {
			t.Errorf("confirmation asks %q", text)
		}
		b.do(t, testWait, chromedp.Click(chromedp.ID("confirm-ok")))
		b.waitJS(t, testWait, "the switch off", `document.querySelector('`+global+`')?.dataset.on === 'false'`)
		// A pause on purpose is neither a failure rate nor a fault.
		b.waitJS(t, testWait, "the badge Paused", `document.getElementById('badge').dataset.badge === 'Paused' &&
			document.getElementById('badge').classList.contains('paused') && !document.getElementById('badge').classList.contains('high-risk') &&
			document.getElementById('h-badge').textContent === 'Paused' && !document.getElementById('h-pause').hidden &&
			document.getElementById('h-pause').textContent.startsWith('Paused since ')`)
		taken := m.count(t, `select count(*) from ingestion_messages`)
		// The gateway sees the switch when it next reads it, which on a
		// busy machine may take a while: wait until it says it paused.
		testutil.Eventually(t, testWait, "the gateway paused", func() error {
			v, err := testutil.Metric(ctx, "http://"+m.gatewayAdmin+"/metrics", "telemesh_gateway_paused")
			if err != nil {
				return err
			}
			if v != 1 {
				return fmt.Errorf("telemesh_gateway_paused %v", v)
			}
			return nil
		})
		for i := 0; i < 12; i++ {
			if _, err := m.js.Publish(ctx, "devices.thermo-02.telemetry", fmt.Appendf(nil, `{"temp_c": %d, "humidity": 45}`, 15+i)); err != nil {
				t.Fatal(err)
			}
		}
		b.waitJS(t, testWait, "a backlog of 12", `document.getElementById('h-backlog-total')?.dataset.total === '12'`)
		if n := m.count(t, `select count(*) from ingestion_messages`); n != taken {
			t.Fatalf("%d messages taken while the pipeline was off", n-taken)
		}
		b.waitJS(t, testWait, "the row left to retry", `document.querySelectorAll('#h-pf button.retry').length === 1`)
		// The toast of the switch would cover the table in the picture.
		b.do(t, testWait, chromedp.Evaluate[chromedp.Void](`document.getElementById('toast').hidden = true`))
		b.screenshot(t, "viewer-health.png", true)

		b.do(t, testWait,
			chromedp.Click(chromedp.CSS(global)),
			chromedp.WaitVisible(chromedp.ID("confirm-ok")),
			chromedp.Click(chromedp.ID("confirm-ok")),
		)
		b.waitJS(t, testWait, "the switch on", `document.querySelector('`+global+`')?.dataset.on === 'true'`)
		b.waitJS(t, testWait, "the badge back to the failure rate", `document.getElementById('badge').dataset.badge !== 'Paused' &&
			document.getElementById('h-pause').hidden`)
		b.waitJS(t, testWait, "the backlog drained", `document.getElementById('h-backlog-total')?.dataset.total === '0'`)
		m.waitCount(t, taken+12, "the 12 messages taken", `select count(*) from ingestion_messages`)
	})

	t.Run("the message lookup shows every stage", func(t *testing.T) {
		var id uuid.UUID
		if err := m.db.Pool.QueryRow(ctx, `select id from ingestion_messages where source_message_id = 'browser-1'`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		b.do(t, testWait,
			chromedp.Click(chromedp.CSS(`#tabs button[data-tab="lookup"]`)),
			chromedp.SendKeys(chromedp.ID("lookup-ref"), id.String()),
			chromedp.Click(chromedp.CSS(`#lookup-form button[type="submit"]`)),
		)
		// browser-1 had no humidity: derive finished with feels_like_f
		// unresolved; every other stage completed.
		var stages []string
		for _, s := range []string{"ingress/completed", "validate/completed", "mutate/completed", "derive/unresolved", "persist/completed", "publish/completed"} {
			stage, status, _ := strings.Cut(s, "/")
			stages = append(stages, `document.querySelector('#trace-stages .stage-card[data-stage="`+stage+`"][data-status="`+status+`"]') !== null`)
		}
		b.waitJS(t, testWait, "all six stages", strings.Join(stages, " && "))
		b.waitJS(t, testWait, "the message and its telemetry row",
			`document.querySelector('#trace-summary')?.dataset.messageId === `+jsString(id.String())+` &&
			 document.querySelector('#trace-telemetry')?.textContent.includes('processed')`)
		// The device message id finds it too.
		b.do(t, testWait,
			chromedp.SetValue(chromedp.ID("lookup-ref"), "browser-bad"),
			chromedp.Click(chromedp.CSS(`#lookup-form button[type="submit"]`)),
		)
		b.waitJS(t, testWait, "the invalid message halted at validate",
			`document.querySelector('#trace-summary')?.dataset.status === 'failed_validation' &&
			 document.querySelector('#trace-stages .stage-card[data-stage="validate"][data-status="halted"]') !== null`)
	})

	if p := b.consoleProblems(); len(p) > 0 {
		t.Errorf("the page logged errors: %v", p)
	}
}
