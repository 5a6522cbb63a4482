package pg_test

import (
	"context"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/testdb"
)

// TestReachableWhileEveryConnectionWorks checks a pool whose every
// connection is in use counts as reachable at once, where a ping would wait
// for a connection and time out, and that an idle pool is pinged.
func TestReachableWhileEveryConnectionWorks(t *testing.T) {
	db := testdb.New(t)
	pool, err := pg.Open(t.Context(), db.URL, pg.Options{MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := pg.Reachable(t.Context(), pool); err != nil {
		t.Fatalf("idle pool: %v", err)
	}
	conn, err := pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if err := pg.Ping(ctx, pool); err == nil {
		t.Fatal("a ping of a pool with no free connection succeeded; the test cannot tell the two apart")
	}
	if err := pg.Reachable(ctx, pool); err != nil {
		t.Errorf("busy pool: %v, want reachable", err)
	}
}
