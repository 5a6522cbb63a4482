// Package testdb gives each test a throwaway Postgres database of its own, so
// tests and packages run in parallel against one server.
//
// The server is TELEMESH_TEST_DATABASE_URL, else the local one
// ([DefaultURL]). A test that cannot reach it fails with a message saying how
// to start one; it never skips.
//
// Migrating a database creates a few dozen partitions, which costs most of a
// second, so the migrated schema is built once into a template database
// (telemesh_tmpl_<migrations hash>_<UTC day>, shared by every test process on
// the server and rebuilt when the migrations or the day change) and each test
// database is a copy of it. [New] still runs [migrate.Up] on the copy, which
// finds nothing to do unless the template is stale.
package testdb

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/migrate"
	"github.com/telemesh/telemesh/migrations"
)

// DefaultURL is the server used when TELEMESH_TEST_DATABASE_URL is not set:
// the local one, with trust authentication.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// EnvURL names the environment variable that points the tests at another
// server. Its database is used only to create and drop test databases.
const EnvURL = "TELEMESH_TEST_DATABASE_URL"

// The bounds are generous: on a busy machine a connection or a CREATE
// DATABASE can take seconds, and a server that is down refuses at once
// rather than running into them.
const (
	setupTimeout   = 2 * time.Minute
	cleanupTimeout = 2 * time.Minute
	connectTimeout = 30 * time.Second
	templatePrefix = "telemesh_tmpl_"
	// templateLockKey serialises template builds across test processes.
	templateLockKey = int64(0x7465_6c65_6d65_7368) // "telemesh"
)

// DB is a database that exists for one test.
type DB struct {
	// URL connects to the database; hand it to code under test, or to a
	// subprocess.
	URL string
	// Pool is open on the database and is closed when the test ends.
	Pool *pgxpool.Pool
}

// New returns a fresh database with every migration applied. It and its pool
// are dropped when the test ends.
func New(t testing.TB) *DB {
	t.Helper()
	server := serverURL()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	tmpl := templateDatabase(ctx, t, server)
	db := create(ctx, t, server, tmpl)
	if _, err := migrate.Up(ctx, db.URL, nil); err != nil {
		t.Fatalf("testdb: migrate %s: %v", redact(db.URL), err)
	}
	db.open(ctx, t)
	return db
}

// NewEmpty returns a fresh database with no migration applied, for tests of
// the migrations themselves. It and its pool are dropped when the test ends.
func NewEmpty(t testing.TB) *DB {
	t.Helper()
	server := serverURL()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	db := create(ctx, t, server, "")
	db.open(ctx, t)
	return db
}

func serverURL() string {
	if s := os.Getenv(EnvURL); s != "" {
		return s
	}
	return DefaultURL
}

// create makes an empty database, or a copy of template when it is not
// empty, and registers its removal.
func create(ctx context.Context, t testing.TB, server, template string) *DB {
	t.Helper()
	admin := connect(ctx, t, server)
	defer admin.Close(context.Background())

	name := "telemesh_test_" + randomHex(t, 8)
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		sql += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if _, err := admin.Exec(ctx, sql); err != nil {
		t.Fatalf("testdb: create database %s on %s: %v", name, redact(server), err)
	}
	dbURL, err := withDatabase(server, name)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	db := &DB{URL: dbURL}
	t.Cleanup(func() {
		if db.Pool != nil {
			db.Pool.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := dropDatabase(ctx, server, name); err != nil {
			t.Errorf("testdb: drop database %s: %v", name, err)
		}
	})
	return db
}

func (db *DB) open(ctx context.Context, t testing.TB) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	cfg.ConnConfig.ConnectTimeout = connectTimeout
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("testdb: open pool on %s: %v", redact(db.URL), err)
	}
	db.Pool = pool
}

// connect opens a connection to the server's maintenance database, failing
// the test with directions when the server cannot be reached.
func connect(ctx context.Context, t testing.TB, server string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(server)
	if err != nil {
		t.Fatalf("testdb: %s is not a valid Postgres URL: %v", EnvURL, err)
	}
	cfg.ConnectTimeout = connectTimeout
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("testdb: cannot reach the test Postgres server at %s: %v\n"+
			"Tests need a real Postgres server; they do not skip. Either start the local one:\n"+
			"    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"+
			"or point %s at a server where this user may create databases, e.g.\n"+
			"    %s='postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable'",
			redact(server), err, EnvURL, EnvURL)
	}
	return conn
}

func dropDatabase(ctx context.Context, server, name string) error {
	cfg, err := pgx.ParseConfig(server)
	if err != nil {
		return err
	}
	cfg.ConnectTimeout = connectTimeout
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// templates remembers, per server, the template this process has checked,
// so only the first New in a test binary pays for it.
var templates = struct {
	sync.Mutex
	ready map[string]string
}{ready: map[string]string{}}

// templateDatabase returns the name of a migrated template database on the
// server, building it if no test process has yet today.
func templateDatabase(ctx context.Context, t testing.TB, server string) string {
	t.Helper()
	templates.Lock()
	defer templates.Unlock()
	name := templateName(t, time.Now())
	if templates.ready[server] == name {
		return name
	}

	admin := connect(ctx, t, server)
	defer admin.Close(context.Background())
	// Session-level, so a test process that dies releases it. Every process
	// connects to the same maintenance database, so they share the lock.
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock($1)", templateLockKey); err != nil {
		t.Fatalf("testdb: lock for the template database: %v", err)
	}
	defer func() { _, _ = admin.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", templateLockKey) }()

	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatalf("testdb: look up the template database: %v", err)
	}
	if !exists {
		if err := buildTemplate(ctx, admin, server, name); err != nil {
			t.Fatalf("testdb: build the template database %s: %v", name, err)
		}
	}
	dropStaleTemplates(ctx, admin, time.Now())
	templates.ready[server] = name
	return name
}

// buildTemplate migrates a scratch database and renames it into place, so a
// template is never seen half-built. admin holds the template lock.
func buildTemplate(ctx context.Context, admin *pgx.Conn, server, name string) error {
	build := pgx.Identifier{name + "_build"}.Sanitize()
	// Left over by a process that died while building.
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+build+" WITH (FORCE)"); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+build); err != nil {
		return err
	}
	buildURL, err := withDatabase(server, name+"_build")
	if err != nil {
		return err
	}
	if _, err := migrate.Up(ctx, buildURL, nil); err != nil {
		_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+build+" WITH (FORCE)")
		return err
	}
	// Nobody may connect to a template: a connection would make every
	// CREATE DATABASE ... TEMPLATE fail while it lasts.
	for _, sql := range []string{
		"ALTER DATABASE " + build + " RENAME TO " + pgx.Identifier{name}.Sanitize(),
		"ALTER DATABASE " + pgx.Identifier{name}.Sanitize() + " WITH IS_TEMPLATE true ALLOW_CONNECTIONS false",
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}

// dropStaleTemplates removes templates older than yesterday; a test process
// that started yesterday may still be copying yesterday's. Failures are
// ignored: a stale template costs only disk.
func dropStaleTemplates(ctx context.Context, admin *pgx.Conn, now time.Time) {
	rows, err := admin.Query(ctx, "SELECT datname FROM pg_database WHERE datname LIKE $1", templatePrefix+"%")
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	oldest := now.UTC().AddDate(0, 0, -1).Format("20060102")
	for _, n := range names {
		m := templateNameRE.FindStringSubmatch(n)
		if m == nil || m[1] >= oldest {
			continue
		}
		id := pgx.Identifier{n}.Sanitize()
		if _, err := admin.Exec(ctx, "ALTER DATABASE "+id+" WITH IS_TEMPLATE false"); err != nil {
			continue
		}
		_, _ = admin.Exec(ctx, "DROP DATABASE "+id)
	}
}

var templateNameRE = regexp.MustCompile(`^` + templatePrefix + `[0-9a-f]{12}_([0-9]{8})(_build)?$`)

// templateName is specific to the embedded migrations and to the UTC day,
// since the migrations create partitions around the current day.
func templateName(t testing.TB, now time.Time) string {
	t.Helper()
	h := sha256.New()
	err := fs.WalkDir(migrations.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.FS, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", path, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		t.Fatalf("testdb: read the embedded migrations: %v", err)
	}
	return templatePrefix + hex.EncodeToString(h.Sum(nil))[:12] + "_" + now.UTC().Format("20060102")
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("testdb: random name: %v", err)
	}
	return hex.EncodeToString(b)
}

// withDatabase returns server with its database replaced by name. It accepts
// both URLs and keyword/value connection strings.
func withDatabase(server, name string) (string, error) {
	if strings.HasPrefix(server, "postgres://") || strings.HasPrefix(server, "postgresql://") {
		u, err := url.Parse(server)
		if err != nil {
			return "", fmt.Errorf("%s is not a valid URL: %w", EnvURL, errors.Unwrap(err))
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	// In a keyword/value string the last setting wins.
	return server + " dbname=" + name, nil
}

var dsnPassword = regexp.MustCompile(`(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// redact returns a connection string safe to print: the password, if any,
// is masked.
func redact(s string) string {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil {
			return "(an unparsable URL)"
		}
		if q := u.Query(); q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.Redacted()
	}
	return dsnPassword.ReplaceAllString(s, "${1}xxxxx")
}
