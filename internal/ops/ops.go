// Package ops holds the operator commands' logic: tracing one message
// through the chain, replaying what did not get through, flipping the
// pipeline switches and enforcing retention. Every function takes a
// *pgxpool.Pool, so the commands stay thin and the logic is tested against a
// real database.
package ops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrNotFound is a message, organization or device the caller names that
// does not exist.
var ErrNotFound = errors.New("not found")

// Filter narrows the messages a replay acts on. Zero fields match
// everything.
type Filter struct {
	// Organization is an organization slug.
	Organization string
	// Device is a device's external id.
	Device string
	// Since and Until bound received_at: Since inclusive, Until exclusive.
	Since, Until time.Time
}

// resolved is a Filter with its names turned into ids.
type resolved struct {
	org     *uuid.UUID
	devices []uuid.UUID
	since   *time.Time
	until   *time.Time
}

// resolve looks up the organization and device a Filter names.
func (f Filter) resolve(ctx context.Context, pool *pgxpool.Pool) (resolved, error) {
	var r resolved
	if f.Organization != "" {
		var id uuid.UUID
		err := pool.QueryRow(ctx, `select id from organizations where slug = $1`, f.Organization).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return r, fmt.Errorf("organization %q: %w", f.Organization, ErrNotFound)
		}
		if err != nil {
			return r, fmt.Errorf("look up organization %q: %w", f.Organization, err)
		}
		r.org = &id
	}
	if f.Device != "" {
		rows, err := pool.Query(ctx, `select id from devices where external_id = $1`, f.Device)
		if err != nil {
			return r, fmt.Errorf("look up device %q: %w", f.Device, err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return r, fmt.Errorf("look up device %q: %w", f.Device, err)
		}
		if len(ids) == 0 {
			return r, fmt.Errorf("device %q: %w", f.Device, ErrNotFound)
		}
		r.devices = ids
	}
	if !f.Since.IsZero() {
		s := f.Since
		r.since = &s
	}
	if !f.Until.IsZero() {
		u := f.Until
		r.until = &u
	}
	return r, nil
}

// args returns the filter's four query arguments, in the order the
// filterSQL fragment expects them starting at $start.
func (r resolved) args() []any {
	var devices []string
	for _, d := range r.devices {
		devices = append(devices, d.String())
	}
	return []any{r.org, devices, r.since, r.until}
}

// filterSQL returns the WHERE fragment matching a resolved filter on the
// table alias a, with its arguments numbered from start.
func filterSQL(a string, start int) string {
	return fmt.Sprintf(`($%[2]d::uuid is null or %[1]s.organization_id = $%[2]d)
	and ($%[3]d::uuid[] is null or %[1]s.device_id = any($%[3]d))
	and ($%[4]d::timestamptz is null or %[1]s.received_at >= $%[4]d)
	and ($%[5]d::timestamptz is null or %[1]s.received_at < $%[5]d)`, a, start, start+1, start+2, start+3)
}
