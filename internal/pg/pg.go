// Package pg opens the Postgres connection pool every stage uses.
package pg

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Options tune a pool. Zero values keep pgx's defaults.
type Options struct {
	// ApplicationName shows in pg_stat_activity, so an operator can tell the
	// stages apart.
	ApplicationName string
	// MaxConns bounds the pool.
	MaxConns int32
	// Tracer, if set, traces every statement (pgx.QueryTracer, and
	// pgx.CopyFromTracer when it is one too).
	Tracer pgx.QueryTracer
}

// ParseURL checks a Postgres URL or keyword/value string without connecting.
// Its error never contains the password.
func ParseURL(url string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message repeats the connection string with the password
		// masked; keep only the reason.
		return nil, fmt.Errorf("not a valid Postgres URL or DSN: %w", unwrapAll(err))
	}
	return cfg, nil
}

// PlanEachTime is the query mode, passed as a query's first argument, of a
// statement whose good plan depends on how many rows its tables hold now:
// a lookup of a batch's keys (= any($1)) in a table that grows. Such a
// statement is planned at each execution for its parameters and the
// tables as they are. Otherwise pgx prepares it once per connection, which
// keeps it as long as it lives, and after five executions Postgres may
// settle on one generic plan made while the tables were small: on a fresh
// database that plan is a sequential scan, kept as the table grows to
// millions of rows, so every batch reads the whole table. Planning every
// statement each time instead (plan_cache_mode force_custom_plan) costs
// Postgres about 40 % more CPU per message; only these need it.
const PlanEachTime = pgx.QueryExecModeCacheDescribe

// Open returns a pool for url. It does not wait for the server: connections
// are made on first use, so a stage can start before Postgres is ready and
// report not-ready until it is.
func Open(ctx context.Context, url string, opts Options) (*pgxpool.Pool, error) {
	cfg, err := ParseURL(url)
	if err != nil {
		return nil, err
	}
	if opts.ApplicationName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = opts.ApplicationName
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	if opts.Tracer != nil {
		cfg.ConnConfig.Tracer = opts.Tracer
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres pool: %w", err)
	}
	return pool, nil
}

// Ping checks that a connection can be had and used.
func Ping(ctx context.Context, pool *pgxpool.Pool) error {
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}

// Reachable reports whether the stage can reach Postgres, for its
// readiness: a pool whose every connection is in use is working, so it is
// taken as reachable without a ping, which would wait for one of them and,
// under full load, time out and take a busy replica out of rotation. Any
// other pool is pinged.
func Reachable(ctx context.Context, pool *pgxpool.Pool) error {
	if st := pool.Stat(); st.MaxConns() > 0 && st.AcquiredConns() >= st.MaxConns() {
		return nil
	}
	return Ping(ctx, pool)
}

func unwrapAll(err error) error {
	type unwrapper interface{ Unwrap() error }
	for {
		u, ok := err.(unwrapper)
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}
