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

// planCacheMode is the setting that decides whether a statement pgx
// prepared once is planned again for each execution. Unless the URL sets
// it, every connection plans each execution for the parameters and table
// sizes of that moment: a connection keeps its prepared statements for as
// long as it lives, and after five executions Postgres may keep one
// generic plan, made while the tables were small. On a fresh database that
// plan is a sequential scan, and a lookup of a batch's keys (= any($1))
// stays one as the table grows to millions of rows: every batch then reads
// the whole table, until the connection is replaced or ANALYZE runs.
const planCacheMode = "plan_cache_mode"

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
	if _, set := cfg.ConnConfig.RuntimeParams[planCacheMode]; !set {
		cfg.ConnConfig.RuntimeParams[planCacheMode] = "force_custom_plan"
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
