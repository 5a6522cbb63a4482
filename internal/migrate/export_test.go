package migrate

import (
	"context"

	"github.com/pressly/goose/v3"
)

// Step applies (up) or rolls back (down) one migration and returns its
// version; the tests use it to check each migration on its own.
func Step(ctx context.Context, databaseURL string, up bool) (int64, error) {
	var version int64
	err := withProvider(ctx, databaseURL, true, func(p *goose.Provider) error {
		var r *goose.MigrationResult
		var err error
		if up {
			r, err = p.UpByOne(ctx)
		} else {
			r, err = p.Down(ctx)
		}
		if err != nil {
			return err
		}
		version = r.Source.Version
		return nil
	})
	return version, err
}
