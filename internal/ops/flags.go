package ops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/pipeline"
)

// Switches are the three pipeline switches.
type Switches struct {
	PipelineEnabled      bool `json:"pipeline_enabled"`
	PublishAnalytics     bool `json:"publish_analytics"`
	PublishInvalidEvents bool `json:"publish_invalid_events"`
}

// and returns the switches on in both s and o.
func (s Switches) and(o Switches) Switches {
	return Switches{
		PipelineEnabled:      s.PipelineEnabled && o.PipelineEnabled,
		PublishAnalytics:     s.PublishAnalytics && o.PublishAnalytics,
		PublishInvalidEvents: s.PublishInvalidEvents && o.PublishInvalidEvents,
	}
}

// SwitchRow is one pipeline_switches row: the global one (Organization
// empty) or an organization's, with the values in effect for it.
type SwitchRow struct {
	OrganizationID *uuid.UUID `json:"organization_id,omitempty"`
	Organization   string     `json:"organization,omitempty"`
	// Exists is false for an organization without a row of its own (every
	// switch on).
	Exists    bool       `json:"exists"`
	Switches  Switches   `json:"switches"`
	Effective Switches   `json:"effective"`
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
	UpdatedBy string     `json:"updated_by,omitempty"`
}

// GetSwitches returns the global row first, then the row of organization
// (a slug) or, when it is empty, of every organization that has one.
func GetSwitches(ctx context.Context, pool *pgxpool.Pool, organization string) ([]SwitchRow, error) {
	rows, err := pool.Query(ctx, `select s.organization_id, coalesce(o.slug, ''), s.pipeline_enabled, s.publish_analytics,
			s.publish_invalid_events, s.updated_at, coalesce(s.updated_by, '')
		from pipeline_switches s left join organizations o on o.id = s.organization_id
		where s.organization_id is null or $1 = '' or o.slug = $1
		order by s.organization_id is not null, o.slug`, organization)
	if err != nil {
		return nil, fmt.Errorf("read pipeline switches: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SwitchRow, error) {
		var s SwitchRow
		var at time.Time
		err := r.Scan(&s.OrganizationID, &s.Organization, &s.Switches.PipelineEnabled, &s.Switches.PublishAnalytics,
			&s.Switches.PublishInvalidEvents, &at, &s.UpdatedBy)
		s.Exists, s.UpdatedAt = true, &at
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("read pipeline switches: %w", err)
	}
	global := SwitchRow{Switches: Switches{true, true, true}}
	if len(list) > 0 && list[0].OrganizationID == nil {
		global, list = list[0], list[1:]
	}
	global.Effective = global.Switches
	if organization != "" && len(list) == 0 {
		var id uuid.UUID
		err := pool.QueryRow(ctx, `select id from organizations where slug = $1`, organization).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("organization %q: %w", organization, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("look up organization %q: %w", organization, err)
		}
		list = append(list, SwitchRow{OrganizationID: &id, Organization: organization, Switches: Switches{true, true, true}})
	}
	out := []SwitchRow{global}
	for _, s := range list {
		s.Effective = global.Switches.and(s.Switches)
		out = append(out, s)
	}
	return out, nil
}

// SetSwitch sets one switch (a [pipeline.Switch] by name) of the global row, or of
// organization's row when it is not empty, creating the row if needed, and
// records by as who changed it.
func SetSwitch(ctx context.Context, pool *pgxpool.Pool, organization, name string, on bool, by string) error {
	sw, ok := pipeline.ParseSwitch(name)
	if !ok {
		return fmt.Errorf("switch %q: %w", name, ErrNotFound)
	}
	col := sw.Column()
	var org *uuid.UUID
	if organization != "" {
		var id uuid.UUID
		err := pool.QueryRow(ctx, `select id from organizations where slug = $1`, organization).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("organization %q: %w", organization, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("look up organization %q: %w", organization, err)
		}
		org = &id
	}
	// col comes from SwitchNames, never from the caller.
	_, err := pool.Exec(ctx, `insert into pipeline_switches (organization_id, `+col+`, updated_by) values ($1, $2, $3)
		on conflict (organization_id) do update set `+col+` = excluded.`+col+`, updated_by = excluded.updated_by, updated_at = now()`,
		org, on, by)
	if err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	return nil
}
