package publisher

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/outbox"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
)

// captured is one log record a test handler kept.
type captured struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// capture is a slog handler that keeps every record, so a test can count
// what the stage logged.
type capture struct {
	mu      sync.Mutex
	records *[]captured
	attrs   []slog.Attr
}

func newCapture() *capture { return &capture{records: &[]captured{}} }

func (c *capture) Enabled(context.Context, slog.Level) bool { return true }

func (c *capture) Handle(_ context.Context, r slog.Record) error {
	rec := captured{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range c.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	c.mu.Lock()
	*c.records = append(*c.records, rec)
	c.mu.Unlock()
	return nil
}

func (c *capture) WithAttrs(as []slog.Attr) slog.Handler {
	return &capture{records: c.records, attrs: append(append([]slog.Attr{}, c.attrs...), as...)}
}

func (c *capture) WithGroup(string) slog.Handler { return c }

// warnings returns the WARN (and higher) records so far.
func (c *capture) warnings() []captured {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []captured
	for _, r := range *c.records {
		if r.level >= slog.LevelWarn {
			out = append(out, r)
		}
	}
	return out
}

// stage is a publish stage over a throwaway database and an in-process
// NATS server, with one organization and two devices.
type stage struct {
	t       *testing.T
	db      *testdb.DB
	js      jetstream.JetStream
	srv     *Server
	log     *capture
	org     uuid.UUID
	devices []uuid.UUID
}

func newStage(t *testing.T) *stage {
	t.Helper()
	s := &stage{t: t, db: testdb.New(t), log: newCapture()}
	ns := testnats.New(t)
	_, s.js = ns.Connect(t)
	ctx := t.Context()
	s.org = uuid.New()
	s.exec(`insert into organizations (id, slug, name) values ($1, 'acme', 'Acme')`, s.org)
	s.exec(`insert into device_types (organization_id, name) values ($1, 'sensor')`, s.org)
	for _, name := range []string{"d1", "d2"} {
		id := uuid.New()
		s.exec(`insert into devices (id, organization_id, device_type_id, external_id)
			select $1, $2, id, $3 from device_types where organization_id = $2`, id, s.org, name)
		s.devices = append(s.devices, id)
	}
	natsCfg := DefaultNATSConfig()
	kv, err := Setup(ctx, s.js, natsCfg)
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	logger := slog.New(s.log)
	cat := catalog.NewCache(s.db.Pool, logger, time.Minute)
	if err := cat.Load(ctx); err != nil {
		t.Fatalf("load catalog: %v", err)
	}
	logs, err := stagelog.New(stagelog.ModeAll, 1, "test-0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.RetryBase, cfg.RetryMax = time.Millisecond, time.Millisecond
	pub := NewEmitter(s.js, kv, natsCfg, "test", cat.Switches, 10*time.Second, logger)
	s.srv = New(cfg, pub, s.db.Pool, cat, logs, logger)
	return s
}

func (s *stage) exec(sql string, args ...any) {
	s.t.Helper()
	if _, err := s.db.Pool.Exec(context.Background(), sql, args...); err != nil {
		s.t.Fatalf("%s: %v", sql, err)
	}
}

// pending adds a telemetry row of device d waiting for its publish, due now
// in the publish outbox.
func (s *stage) pending(d uuid.UUID, recorded time.Time) uuid.UUID {
	s.t.Helper()
	id := uuid.Must(uuid.NewV7())
	s.exec(`insert into ingestion_messages (id, organization_id, device_id, source_subject, dedupe_key, status, received_at)
		values ($1, $2, $3, 'devices.x.telemetry', $4, 'completed', $5)`, id, s.org, d, "seq:t@1:"+id.String(), recorded)
	s.exec(`insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
			ingestion_message_id, transformed_values, validation_status, processing_state, next_publish_at)
		values ($1, $2, $2, $3, $4, 'telemetry', $1, '{"t": 21.5}', 'valid', 'pending', now())`, id, recorded, s.org, d)
	if _, err := outbox.Add(s.t.Context(), s.db.Pool, []outbox.Row{{ID: id, RecordedAt: recorded}}, time.Now(), 0); err != nil {
		s.t.Fatal(err)
	}
	return id
}

// round runs one retry round, failing the test on an error.
func (s *stage) round() {
	s.t.Helper()
	if _, err := s.srv.RetryOnce(s.t.Context()); err != nil {
		s.t.Fatalf("retry round: %v", err)
	}
}

// rounds runs retry rounds until cond holds or the deadline passes.
func (s *stage) rounds(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("not true within 20s: %s", what)
		}
		s.round()
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *stage) strings(sql string, args ...any) []string {
	s.t.Helper()
	rows, err := s.db.Pool.Query(context.Background(), sql, args...)
	if err != nil {
		s.t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			s.t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func (s *stage) count(sql string, args ...any) int {
	s.t.Helper()
	var n int
	if err := s.db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		s.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// distinct returns the distinct values of list, in the order first seen.
func distinct(list []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range list {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// warned returns the WARN records whose message mentions what.
func (s *stage) warned(what string) []captured {
	var out []captured
	for _, r := range s.log.warnings() {
		if strings.Contains(r.msg, what) {
			out = append(out, r)
		}
	}
	return out
}

// A deleted bucket or analytics stream is named in the reason on the rows
// and in the publish stage log, and its loss and its return are each logged
// once as a warning, however many batches and retry rounds fail meanwhile.
func TestLostBucketAndStreamAreNamedAndWarnedOnce(t *testing.T) {
	for _, tc := range []struct {
		name, what, reason string
		lose               func(s *stage) error
	}{
		{
			name: "KV bucket", what: "KV bucket", reason: `KV bucket "device-states" does not exist`,
			lose: func(s *stage) error { return s.js.DeleteKeyValue(s.t.Context(), "device-states") },
		},
		{
			name: "analytics stream", what: "analytics stream", reason: `analytics stream "TELEMESH_ANALYTICS" does not exist`,
			lose: func(s *stage) error { return s.js.DeleteStream(s.t.Context(), "TELEMESH_ANALYTICS") },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStage(t)
			if err := tc.lose(s); err != nil {
				t.Fatal(err)
			}
			now := time.Now().UTC()
			var ids []string
			for i := range 4 {
				ids = append(ids, s.pending(s.devices[i%2], now.Add(time.Duration(i)*time.Millisecond)).String())
			}
			// Several rounds fail, each one a batch.
			failedAttempts := func() bool {
				return s.count(`select count(*) from device_telemetry_logs where processing_state = 'publish_failed' and publish_attempts >= 3`) == 4
			}
			s.rounds("every row failed three times", failedAttempts)

			reasons := distinct(s.strings(`select coalesce(failure_reason, '') from device_telemetry_logs order by id`))
			if len(reasons) != 1 || reasons[0] != tc.reason {
				t.Errorf("row reasons %q, want only %q", reasons, tc.reason)
			}
			logged := distinct(s.strings(`select coalesce(errors->>'reason', '') from ingestion_stage_logs
				where stage = 'publish' and status = 'failed' and message_id::text = any($1)`, ids))
			if len(logged) != 1 || logged[0] != tc.reason {
				t.Errorf("publish stage-log reasons %q, want only %q", logged, tc.reason)
			}
			if w := s.warned(tc.what); len(w) != 1 {
				t.Errorf("%d warnings about the %s after %d failed rounds, want 1: %+v", len(w), tc.what, 3, s.log.warnings())
			}

			// Setup restores it, as a restarted publisher would.
			if _, err := Setup(t.Context(), s.js, DefaultNATSConfig()); err != nil {
				t.Fatal(err)
			}
			s.rounds("every row processed", func() bool {
				return s.count(`select count(*) from device_telemetry_logs where processing_state = 'processed'`) == 4
			})
			s.pending(s.devices[0], time.Now().UTC())
			s.rounds("the next row processed", func() bool {
				return s.count(`select count(*) from device_telemetry_logs where processing_state = 'processed'`) == 5
			})
			w := s.warned(tc.what)
			if len(w) != 2 {
				t.Fatalf("%d warnings about the %s after it came back, want 2 (lost, back): %+v", len(w), tc.what, w)
			}
			for i, r := range w {
				t.Logf("warning %d: %s %v", i, r.msg, r.attrs)
			}
			if !strings.Contains(w[0].msg, "lost") || !strings.Contains(w[1].msg, "back") {
				t.Errorf("warnings %q then %q, want lost then back", w[0].msg, w[1].msg)
			}
			if tc.what == "KV bucket" && !strings.Contains(fmt.Sprint(w[0].attrs), "telemesh replay kv-rebuild") {
				t.Errorf("the loss warning does not say how to rebuild the bucket: %v", w[0].attrs)
			}
		})
	}
}
