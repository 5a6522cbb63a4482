// Package testdb gives each test a throwaway Postgres database of its own,
// so packages run in parallel against one server.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/migrate"
)

// DefaultURL is the server tests use when TELEMESH_TEST_DATABASE_URL is not
// set: the local one, with trust authentication.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// DB is a database that exists for one test.
type DB struct {
	// URL connects to the database.
	URL string
	// Pool is open on it and closed at cleanup.
	Pool *pgxpool.Pool
}

// New returns a fresh, migrated database, dropped when the test ends.
func New(t testing.TB) *DB {
	t.Helper()
	db := NewEmpty(t)
	if _, err := migrate.Up(context.Background(), db.URL, nil); err != nil {
		t.Fatalf("testdb: migrate: %v", err)
	}
	return db
}

// NewEmpty returns a fresh database with no migrations applied.
func NewEmpty(t testing.TB) *DB {
	t.Helper()
	server := os.Getenv("TELEMESH_TEST_DATABASE_URL")
	if server == "" {
		server = DefaultURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("testdb: cannot reach Postgres at %s: %v\n"+
			"Start the local server (Debian: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start,\n"+
			"or `make services`), or point TELEMESH_TEST_DATABASE_URL at one.", redact(server), err)
	}
	defer admin.Close(context.Background())

	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "telemesh_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "create database "+name); err != nil {
		t.Fatalf("testdb: create database: %v", err)
	}
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("testdb: TELEMESH_TEST_DATABASE_URL must be a URL: %v", err)
	}
	u.Path = "/" + name
	db := &DB{URL: u.String()}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if db.Pool != nil {
			db.Pool.Close()
		}
		c, err := pgx.Connect(ctx, server)
		if err != nil {
			t.Errorf("testdb: drop %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "drop database if exists "+name+" with (force)"); err != nil {
			t.Errorf("testdb: drop %s: %v", name, err)
		}
	})
	pool, err := pgxpool.New(context.Background(), db.URL)
	if err != nil {
		t.Fatalf("testdb: pool: %v", err)
	}
	db.Pool = pool
	return db
}

func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
