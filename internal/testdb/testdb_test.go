package testdb

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestNew(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("migrated", func(t *testing.T) {
		db := New(t)
		ctx := t.Context()
		if err := db.Pool.QueryRow(ctx, "select current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(name, "telemesh_test_") {
			t.Fatalf("database %q", name)
		}
		var global int
		if err := db.Pool.QueryRow(ctx, "select count(*) from pipeline_switches where organization_id is null").Scan(&global); err != nil || global != 1 {
			t.Fatalf("global switch rows = %d, %v", global, err)
		}
		conn, err := pgx.Connect(ctx, db.URL)
		if err != nil {
			t.Fatalf("URL does not connect: %v", err)
		}
		_ = conn.Close(ctx)
	})
	if exists(t, name) {
		t.Fatalf("database %s still exists after its test ended", name)
	}
}

func TestNewEmpty(t *testing.T) {
	t.Parallel()
	db := NewEmpty(t)
	var n int
	if err := db.Pool.QueryRow(t.Context(), "select count(*) from pg_class where relnamespace = 'public'::regnamespace").Scan(&n); err != nil || n != 0 {
		t.Fatalf("relations in public = %d, %v; want an empty database", n, err)
	}
}

func TestParallel(t *testing.T) {
	t.Parallel()
	const n = 6
	names := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			db := New(t)
			if err := db.Pool.QueryRow(t.Context(), "select current_database()").Scan(&names[i]); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, name := range names {
		if name == "" || seen[name] {
			t.Fatalf("databases %v are not distinct", names)
		}
		seen[name] = true
	}
}

func exists(t *testing.T, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), serverURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var ok bool
	if err := conn.QueryRow(t.Context(), "select exists (select 1 from pg_database where datname = $1)", name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// fakeTB records how a helper ends a test: Fatalf stops the goroutine as
// testing's does, and a skip is recorded so the test can refuse it.
type fakeTB struct {
	testing.TB
	mu      sync.Mutex
	fatal   string
	skipped bool
}

func (f *fakeTB) Helper()         {}
func (f *fakeTB) Cleanup(func())  {}
func (f *fakeTB) TempDir() string { return "" }
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }
func (f *fakeTB) Skip(...any)       { f.skipped = true; runtime.Goexit() }
func (f *fakeTB) Skipf(string, ...any) {
	f.skipped = true
	runtime.Goexit()
}
func (f *fakeTB) SkipNow() { f.skipped = true; runtime.Goexit() }

func TestUnreachableServerFails(t *testing.T) {
	t.Setenv(EnvURL, "postgres://app:hunter2@127.0.0.1:1/postgres?sslmode=disable")
	for name, fn := range map[string]func(testing.TB) *DB{"New": New, "NewEmpty": NewEmpty} {
		t.Run(name, func(t *testing.T) {
			f := &fakeTB{TB: t}
			done := make(chan struct{})
			start := time.Now()
			go func() {
				defer close(done)
				fn(f)
			}()
			<-done
			if f.skipped {
				t.Fatal("skipped; an unreachable server must fail the test")
			}
			for _, want := range []string{"127.0.0.1:1", "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start", EnvURL} {
				if !strings.Contains(f.fatal, want) {
					t.Errorf("message does not mention %q:\n%s", want, f.fatal)
				}
			}
			if strings.Contains(f.fatal, "hunter2") {
				t.Errorf("message shows the password:\n%s", f.fatal)
			}
			// A refused connection fails at once; a minute is far more
			// than a busy machine adds, and far less than the set-up
			// timeout a retry loop would run into.
			if took := time.Since(start); took > time.Minute {
				t.Errorf("took %s to give up", took)
			}
		})
	}
}

func TestConnectionStrings(t *testing.T) {
	tests := []struct {
		server, db, redacted string
	}{
		{
			"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "x",
			"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
		},
		{
			"postgresql://app:s3cret@db.example:6432/main?sslmode=require", "x",
			"postgresql://app:xxxxx@db.example:6432/main?sslmode=require",
		},
		{"host=db user=app password=s3cret dbname=main", "x", "host=db user=app password=xxxxx dbname=main"},
		{"host=db password='s3 cret' user=app", "x", "host=db password=xxxxx user=app"},
	}
	for _, tt := range tests {
		got, err := withDatabase(tt.server, tt.db)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := pgx.ParseConfig(got)
		if err != nil {
			t.Fatalf("withDatabase(%q) = %q: %v", tt.server, got, err)
		}
		if cfg.Database != tt.db {
			t.Errorf("withDatabase(%q) connects to %q, want %q", tt.server, cfg.Database, tt.db)
		}
		if r := redact(tt.server); r != tt.redacted {
			t.Errorf("redact(%q) = %q, want %q", tt.server, r, tt.redacted)
		}
	}
}
