// Package migrate applies and rolls back the SQL migrations embedded in the
// binary, with goose.
package migrate

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"path"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the pgx database/sql driver
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/telemesh/telemesh/migrations"
)

// Result is one migration applied or rolled back.
type Result struct {
	Version   int64
	Name      string
	Direction string
	Duration  time.Duration
}

// VersionStatus is one migration and whether it is applied.
type VersionStatus struct {
	Version   int64
	Name      string
	Applied   bool
	AppliedAt time.Time
}

// withProvider opens the database and a goose provider over the embedded
// migrations. A session lock keeps two processes (say, two replicas' init
// jobs) from migrating at once.
func withProvider(ctx context.Context, databaseURL string, fn func(*goose.Provider) error) error {
	db, err := sql.Open("pgx", databaseURL)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer db.Close()
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("connect database: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	return fn(p)
}

func results(rs []*goose.MigrationResult, logger *slog.Logger) []Result {
	out := make([]Result, 0, len(rs))
	for _, r := range rs {
		res := Result{Version: r.Source.Version, Name: path.Base(r.Source.Path), Direction: r.Direction, Duration: r.Duration}
		if logger != nil {
			logger.Info("migration", "direction", res.Direction, "version", res.Version, "name", res.Name, "took", res.Duration.String())
		}
		out = append(out, res)
	}
	return out
}

// Up applies every pending migration.
func Up(ctx context.Context, databaseURL string, logger *slog.Logger) ([]Result, error) {
	var out []Result
	err := withProvider(ctx, databaseURL, func(p *goose.Provider) error {
		rs, err := p.Up(ctx)
		out = results(rs, logger)
		if err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
		return nil
	})
	return out, err
}

// Down rolls back every applied migration above version to; 0 rolls back
// everything.
func Down(ctx context.Context, databaseURL string, to int64, logger *slog.Logger) ([]Result, error) {
	var out []Result
	err := withProvider(ctx, databaseURL, func(p *goose.Provider) error {
		rs, err := p.DownTo(ctx, to)
		out = results(rs, logger)
		if err != nil {
			return fmt.Errorf("migrate down to %d: %w", to, err)
		}
		return nil
	})
	return out, err
}

// Status lists every embedded migration in version order.
func Status(ctx context.Context, databaseURL string) ([]VersionStatus, error) {
	var out []VersionStatus
	err := withProvider(ctx, databaseURL, func(p *goose.Provider) error {
		st, err := p.Status(ctx)
		if err != nil {
			return fmt.Errorf("migration status: %w", err)
		}
		for _, s := range st {
			out = append(out, VersionStatus{
				Version: s.Source.Version, Name: path.Base(s.Source.Path),
				Applied: s.State == goose.StateApplied, AppliedAt: s.AppliedAt,
			})
		}
		return nil
	})
	return out, err
}
