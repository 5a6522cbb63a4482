package ops

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrBadInput is the cause of every [InputError]: an argument the command
// cannot accept as given.
var ErrBadInput = errors.New("bad input")

// InputError says, in one line, what is wrong with an argument and what is
// allowed instead.
type InputError struct {
	// Msg is the line shown to the operator.
	Msg string
}

// Error returns the line.
func (e *InputError) Error() string { return e.Msg }

// Unwrap lets errors.Is(err, ErrBadInput) hold for every InputError.
func (e *InputError) Unwrap() error { return ErrBadInput }

// badInput returns an [InputError] with a formatted line.
func badInput(format string, args ...any) error {
	return &InputError{Msg: fmt.Sprintf(format, args...)}
}

// The name rules the schema's CHECK constraints enforce (migrations
// 00002_devices.sql), checked here first so the operator reads the rule
// instead of a constraint name.
var (
	deviceIDPattern  = regexp.MustCompile(`^[A-Za-z0-9_:-]{1,200}$`)
	slugPattern      = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	baseTopicPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
	suffixPattern    = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
)

// shown quotes a value for an error line, shortened so a runaway argument
// does not flood the terminal.
func shown(v string) string {
	const max = 64
	if len(v) > max {
		return fmt.Sprintf("%q... (%d bytes)", v[:max], len(v))
	}
	return fmt.Sprintf("%q", v)
}

// CheckDeviceID reports whether id can name a device: it is one token of
// the subjects <base>.<device>.<topic>, and an MQTT topic level.
func CheckDeviceID(id string) error {
	if !deviceIDPattern.MatchString(id) {
		return badInput("device id %s is not allowed: use 1 to 200 letters, digits, '_', '-' or ':' (it is one token of the subject <base>.<device>.<topic>, so no dots, spaces, slashes or wildcards)", shown(id))
	}
	return nil
}

// CheckOrganizationSlug reports whether slug can name an organization: it
// is a token of the analytics subjects.
func CheckOrganizationSlug(slug string) error {
	if !slugPattern.MatchString(slug) {
		return badInput("organization %s is not allowed: use 1 to 63 lower-case letters, digits, '_' or '-', starting with a letter or digit (it is a token of the analytics subjects)", shown(slug))
	}
	return nil
}

// CheckDeviceTypeName reports whether name can name a device type.
func CheckDeviceTypeName(name string) error {
	if strings.TrimSpace(name) == "" || !utf8.ValidString(name) || strings.ContainsRune(name, 0) {
		return badInput("device type name %s is not allowed: give a non-blank name in UTF-8", shown(name))
	}
	return nil
}

// CheckBaseTopic reports whether base can be a device type's base topic:
// the first token of its devices' subjects.
func CheckBaseTopic(base string) error {
	if !baseTopicPattern.MatchString(base) {
		return badInput("base topic %s is not allowed: use letters, digits, '_' or '-', starting with a letter or digit (it is the first token of the subject <base>.<device>.<topic>, so no dots, '$' or wildcards)", shown(base))
	}
	return nil
}

// CheckTopicSuffix reports whether suffix can be a topic: the last token of
// its devices' subjects.
func CheckTopicSuffix(suffix string) error {
	if !suffixPattern.MatchString(suffix) {
		return badInput("topic %s is not allowed: use letters, digits, '_' or '-' (it is the last token of the subject <base>.<device>.<topic>, so no dots, spaces or wildcards)", shown(suffix))
	}
	return nil
}

// NewDevice is a device to add.
type NewDevice struct {
	// Organization is the organization's slug; Type the name of one of its
	// device types.
	Organization, Type string
	// ExternalID is the device's own name, used in its subjects.
	ExternalID string
	// Active says whether it is added active.
	Active bool
}

// AddDevice adds a device and returns its uuid. An argument that cannot be
// used (an id in the wrong form or taken, an organization or type that does
// not exist) is an [InputError] saying what is allowed.
func AddDevice(ctx context.Context, pool *pgxpool.Pool, d NewDevice) (uuid.UUID, error) {
	if err := CheckDeviceID(d.ExternalID); err != nil {
		return uuid.Nil, err
	}
	org, err := organizationID(ctx, pool, d.Organization)
	if err != nil {
		return uuid.Nil, err
	}
	var typeID uuid.UUID
	err = pool.QueryRow(ctx, `select id from device_types where organization_id = $1 and name = $2`,
		org, validOrEmpty(d.Type)).Scan(&typeID)
	if errors.Is(err, pgx.ErrNoRows) {
		types, lerr := names(ctx, pool, `select name from device_types where organization_id = $1 order by name`, org)
		if lerr != nil {
			return uuid.Nil, lerr
		}
		return uuid.Nil, badInput("device type %s does not exist in organization %s; its types: %s", shown(d.Type), d.Organization, listOrNone(types))
	}
	if err != nil {
		return uuid.Nil, fmt.Errorf("look up device type %s: %w", shown(d.Type), err)
	}
	var id uuid.UUID
	err = pool.QueryRow(ctx, `insert into devices (organization_id, device_type_id, external_id, name, is_active)
		values ($1, $2, $3, $3, $4) returning id`, org, typeID, d.ExternalID, d.Active).Scan(&id)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "devices_external_id_live_key" {
		var owner string
		if qerr := pool.QueryRow(ctx, `select o.slug from devices d join organizations o on o.id = d.organization_id
			where d.external_id = $1 and d.deleted_at is null`, d.ExternalID).Scan(&owner); qerr != nil {
			owner = "another organization"
		}
		return uuid.Nil, badInput("device id %s is taken (a device of %s): device ids are unique across organizations, because a subject names its device by id alone; pick another id",
			shown(d.ExternalID), owner)
	}
	if err != nil {
		return uuid.Nil, fmt.Errorf("add device %s: %w", shown(d.ExternalID), err)
	}
	return id, nil
}

// SetDeviceActive sets is_active of the live device whose external id or
// uuid is ref. A ref that can be neither is an [InputError]; one that names
// no device wraps [ErrNotFound].
func SetDeviceActive(ctx context.Context, pool *pgxpool.Pool, ref string, active bool) error {
	if _, err := uuid.Parse(ref); err != nil {
		if err := CheckDeviceID(ref); err != nil {
			return err
		}
	}
	tag, err := pool.Exec(ctx, `update devices set is_active = $2, updated_at = now()
		where deleted_at is null and (external_id = $1 or id::text = $1)`, ref, active)
	if err != nil {
		return fmt.Errorf("update device %s: %w", shown(ref), err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("device %s: %w", shown(ref), ErrNotFound)
	}
	return nil
}

// Device is a live device as listed.
type Device struct {
	Organization string    `json:"organization"`
	Type         string    `json:"type"`
	ExternalID   string    `json:"external_id"`
	ID           uuid.UUID `json:"id"`
	Active       bool      `json:"active"`
	BaseTopic    string    `json:"base_topic"`
}

// ListDevices returns the live devices of the organization with slug org,
// or of every organization when org is empty. An organization that does
// not exist is an [InputError] naming those that do.
func ListDevices(ctx context.Context, pool *pgxpool.Pool, org string) ([]Device, error) {
	if org != "" {
		if _, err := organizationID(ctx, pool, org); err != nil {
			return nil, err
		}
	}
	rows, err := pool.Query(ctx, `select o.slug, t.name, d.external_id, d.id, d.is_active, t.base_topic
		from devices d join organizations o on o.id = d.organization_id join device_types t on t.id = d.device_type_id
		where d.deleted_at is null and ($1 = '' or o.slug = $1) order by o.slug, d.external_id`, org)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	devices, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Device, error) {
		var d Device
		err := r.Scan(&d.Organization, &d.Type, &d.ExternalID, &d.ID, &d.Active, &d.BaseTopic)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return devices, nil
}

// organizationID looks up an organization by slug; one that does not exist
// is an [InputError] naming those that do.
func organizationID(ctx context.Context, pool *pgxpool.Pool, slug string) (uuid.UUID, error) {
	var id uuid.UUID
	err := pool.QueryRow(ctx, `select id from organizations where slug = $1`, validOrEmpty(slug)).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		orgs, lerr := names(ctx, pool, `select slug from organizations order by slug`)
		if lerr != nil {
			return uuid.Nil, lerr
		}
		return uuid.Nil, badInput("organization %s does not exist; organizations: %s", shown(slug), listOrNone(orgs))
	}
	if err != nil {
		return uuid.Nil, fmt.Errorf("look up organization %s: %w", shown(slug), err)
	}
	return id, nil
}

// validOrEmpty returns s, or "" when Postgres would refuse it as text (it
// is not UTF-8 or holds a NUL), so a lookup of it finds nothing instead of
// failing.
func validOrEmpty(s string) string {
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		return ""
	}
	return s
}

// names runs a query returning one text column.
func names(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) ([]string, error) {
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list names: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list names: %w", err)
	}
	return out, nil
}

// listOrNone joins names for an error line.
func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none yet (telemesh schema apply creates them)"
	}
	return strings.Join(names, ", ")
}
