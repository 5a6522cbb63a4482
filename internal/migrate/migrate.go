// Package migrate applies, rolls back and lists telemesh's SQL migrations
// (package [migrations]) with goose.
//
// Every function opens its own short-lived connection from a Postgres URL, so
// `telemesh migrate`, `telemesh up` and the test helpers share one code path.
// Up and Down hold a Postgres session advisory lock while they run, so two
// processes (say, two replicas starting at once) never migrate one database
// concurrently: the second waits, then finds nothing left to do.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/telemesh/telemesh/migrations"
)

// Result is one migration applied or rolled back.
type Result struct {
	// Version is the number the file name starts with.
	Version int64
	// Name is the file name, such as 00001_functions.sql.
	Name string
	// Direction is "up" or "down".
	Direction string
	// Duration is how long the migration took.
	Duration time.Duration
}

// VersionStatus is one embedded migration and whether the database has it.
type VersionStatus struct {
	// Version is the number the file name starts with.
	Version int64
	// Name is the file name, such as 00001_functions.sql.
	Name string
	// Applied reports whether the migration is applied.
	Applied bool
	// AppliedAt is when it was applied; zero when it is pending.
	AppliedAt time.Time
}

const (
	// connectTimeout bounds each connection attempt, so a wrong host fails
	// fast instead of hanging a start-up.
	connectTimeout = 10 * time.Second
	// lockWaitSeconds is how long Up and Down wait, polling once a second,
	// for another process's migration to finish.
	lockWaitSeconds = 300
)

// Up applies every pending migration and logs each one applied. On failure
// it returns the migrations applied before the failing one together with the
// error.
func Up(ctx context.Context, databaseURL string, logger *slog.Logger) ([]Result, error) {
	var out []Result
	err := withProvider(ctx, databaseURL, true, func(p *goose.Provider) error {
		rs, err := p.Up(ctx)
		out = results(ctx, logger, rs, err)
		if err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
		return nil
	})
	return out, err
}

// Down rolls back every applied migration whose version is above to, newest
// first, and logs each one; to 0 rolls back everything, leaving only goose's
// version table. On failure it returns the migrations rolled back before the
// failing one together with the error.
func Down(ctx context.Context, databaseURL string, to int64, logger *slog.Logger) ([]Result, error) {
	if to < 0 {
		return nil, fmt.Errorf("migrate down: target version %d is negative", to)
	}
	var out []Result
	err := withProvider(ctx, databaseURL, true, func(p *goose.Provider) error {
		rs, err := p.DownTo(ctx, to)
		out = results(ctx, logger, rs, err)
		if err != nil {
			return fmt.Errorf("migrate down to %d: %w", to, err)
		}
		return nil
	})
	return out, err
}

// Status lists every embedded migration in version order and whether it is
// applied. It does not wait for a migration another process is running.
func Status(ctx context.Context, databaseURL string) ([]VersionStatus, error) {
	var out []VersionStatus
	err := withProvider(ctx, databaseURL, false, func(p *goose.Provider) error {
		st, err := p.Status(ctx)
		if err != nil {
			return fmt.Errorf("migration status: %w", err)
		}
		out = make([]VersionStatus, 0, len(st))
		for _, s := range st {
			out = append(out, VersionStatus{
				Version:   s.Source.Version,
				Name:      path.Base(s.Source.Path),
				Applied:   s.State == goose.StateApplied,
				AppliedAt: s.AppliedAt,
			})
		}
		return nil
	})
	return out, err
}

// withProvider opens databaseURL and runs fn with a goose provider over the
// embedded migrations, closing the connection afterwards.
func withProvider(ctx context.Context, databaseURL string, locked bool, fn func(*goose.Provider) error) (err error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		// pgx masks the password in its message.
		return fmt.Errorf("migrate: %w", err)
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > connectTimeout {
		cfg.ConnectTimeout = connectTimeout
	}
	db := stdlib.OpenDB(*cfg)
	defer func() {
		if cerr := db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("migrate: close database: %w", cerr)
		}
	}()
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("migrate: connect to %s: %w", describe(cfg), err)
	}

	opts := []goose.ProviderOption{
		// Only the embedded SQL files: no Go migrations registered by
		// whatever else is linked into the binary.
		goose.WithDisableGlobalRegistry(true),
	}
	if locked {
		locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, lockWaitSeconds))
		if err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, opts...)
	if err != nil {
		return fmt.Errorf("migrate: load migrations: %w", err)
	}
	return fn(p)
}

// results converts goose's results, including those a partial failure
// carries, and logs each migration.
func results(ctx context.Context, logger *slog.Logger, rs []*goose.MigrationResult, err error) []Result {
	var partial *goose.PartialError
	if errors.As(err, &partial) {
		rs = partial.Applied
	}
	out := make([]Result, 0, len(rs))
	for _, r := range rs {
		res := Result{
			Version:   r.Source.Version,
			Name:      path.Base(r.Source.Path),
			Direction: r.Direction,
			Duration:  r.Duration,
		}
		if logger != nil {
			msg := "migration applied"
			if res.Direction == "down" {
				msg = "migration rolled back"
			}
			logger.InfoContext(ctx, msg, "version", res.Version, "name", res.Name, "duration", res.Duration.String())
		}
		out = append(out, res)
	}
	if partial != nil && partial.Failed != nil && logger != nil {
		logger.ErrorContext(ctx, "migration failed", "version", partial.Failed.Source.Version,
			"name", path.Base(partial.Failed.Source.Path), "direction", partial.Failed.Direction, "error", partial.Err)
	}
	return out
}

// describe names the server and database without the password.
func describe(cfg *pgx.ConnConfig) string {
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}
