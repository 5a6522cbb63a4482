// Package catalog holds what the stages know of the fleet: organizations,
// device types and their topics, devices, parameter and derived parameter
// definitions, and the pipeline switches. Stages read an immutable
// [Snapshot]; a [Cache] replaces it when the definitions change.
package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/reason"
)

// Organization is a tenant.
type Organization struct {
	ID   uuid.UUID
	Slug string
	Name string
}

// DeviceType groups devices that publish the same topics.
type DeviceType struct {
	ID             uuid.UUID
	OrganizationID uuid.UUID
	Name           string
	// BaseTopic is the first subject token, devices by default.
	BaseTopic string
	// Topics are keyed by suffix, such as telemetry.
	Topics map[string]*Topic
}

// Topic is one subject suffix of a device type with its definitions.
type Topic struct {
	ID           uuid.UUID
	DeviceTypeID uuid.UUID
	Suffix       string
	// Parameters are ordered by sequence, then key.
	Parameters []Parameter
	// Derived are ordered by sequence, then key; the deriver orders them by
	// dependency itself.
	Derived []Derived
}

// Rules are the validation rules of a parameter; nil fields are unset.
type Rules struct {
	Min   *float64 `json:"min,omitempty"`
	Max   *float64 `json:"max,omitempty"`
	Regex string   `json:"regex,omitempty"`
	Enum  []any    `json:"enum,omitempty"`
}

// Parameter is a value extracted from the payload.
type Parameter struct {
	Key      string
	JSONPath string
	// DataType is integer, decimal, boolean, string or json.
	DataType string
	Required bool
	Critical bool
	Rules    Rules
	// Mutation is a JSON-Logic expression applied to the extracted value,
	// which it sees as the variable val; nil when there is none.
	Mutation json.RawMessage
	Sequence int
}

// Derived is a value computed from other values with JSON-Logic.
type Derived struct {
	Key        string
	DataType   string
	Expression json.RawMessage
	// Dependencies are the keys the expression reads; empty means the var
	// names found in the expression.
	Dependencies []string
	Sequence     int
}

// Device is one device.
type Device struct {
	ID             uuid.UUID
	OrganizationID uuid.UUID
	DeviceTypeID   uuid.UUID
	ExternalID     string
	Active         bool
}

// Snapshot is the catalog at one moment. It is never modified once loaded.
type Snapshot struct {
	Organizations map[uuid.UUID]*Organization
	DeviceTypes   map[uuid.UUID]*DeviceType
	Topics        map[uuid.UUID]*Topic
	Devices       map[uuid.UUID]*Device
	// DevicesByExternalID holds live devices by external id.
	DevicesByExternalID map[string]*Device
	LoadedAt            time.Time
}

// Querier is the part of a pool or connection the loader uses.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Load reads the whole catalog. Inactive definitions and soft-deleted devices
// are left out.
func Load(ctx context.Context, q Querier) (*Snapshot, error) {
	s := &Snapshot{
		Organizations:       map[uuid.UUID]*Organization{},
		DeviceTypes:         map[uuid.UUID]*DeviceType{},
		Topics:              map[uuid.UUID]*Topic{},
		Devices:             map[uuid.UUID]*Device{},
		DevicesByExternalID: map[string]*Device{},
		LoadedAt:            time.Now(),
	}
	if err := each(ctx, q, `select id, slug, name from organizations`, func(r pgx.Rows) error {
		var o Organization
		if err := r.Scan(&o.ID, &o.Slug, &o.Name); err != nil {
			return err
		}
		s.Organizations[o.ID] = &o
		return nil
	}); err != nil {
		return nil, fmt.Errorf("load organizations: %w", err)
	}
	if err := each(ctx, q, `select id, organization_id, name, base_topic from device_types`, func(r pgx.Rows) error {
		t := DeviceType{Topics: map[string]*Topic{}}
		if err := r.Scan(&t.ID, &t.OrganizationID, &t.Name, &t.BaseTopic); err != nil {
			return err
		}
		s.DeviceTypes[t.ID] = &t
		return nil
	}); err != nil {
		return nil, fmt.Errorf("load device types: %w", err)
	}
	if err := each(ctx, q, `select id, device_type_id, suffix from device_type_topics`, func(r pgx.Rows) error {
		var t Topic
		if err := r.Scan(&t.ID, &t.DeviceTypeID, &t.Suffix); err != nil {
			return err
		}
		if dt := s.DeviceTypes[t.DeviceTypeID]; dt != nil {
			dt.Topics[t.Suffix] = &t
			s.Topics[t.ID] = &t
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("load topics: %w", err)
	}
	if err := each(ctx, q, `select device_type_topic_id, key, json_path, data_type, required, critical,
			validation_rules, mutation_expression, sequence
		from parameter_definitions where is_active order by sequence, key`, func(r pgx.Rows) error {
		var (
			topicID  uuid.UUID
			p        Parameter
			rules    []byte
			mutation []byte
		)
		if err := r.Scan(&topicID, &p.Key, &p.JSONPath, &p.DataType, &p.Required, &p.Critical, &rules, &mutation, &p.Sequence); err != nil {
			return err
		}
		if len(rules) > 0 {
			if err := json.Unmarshal(rules, &p.Rules); err != nil {
				return fmt.Errorf("parameter %s: validation_rules: %w", p.Key, err)
			}
		}
		if len(mutation) > 0 && string(mutation) != "null" {
			p.Mutation = json.RawMessage(mutation)
		}
		if t := s.Topics[topicID]; t != nil {
			t.Parameters = append(t.Parameters, p)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("load parameter definitions: %w", err)
	}
	if err := each(ctx, q, `select device_type_topic_id, key, data_type, expression, dependencies, sequence
		from derived_parameter_definitions where is_active order by sequence, key`, func(r pgx.Rows) error {
		var (
			topicID uuid.UUID
			d       Derived
			expr    []byte
		)
		if err := r.Scan(&topicID, &d.Key, &d.DataType, &expr, &d.Dependencies, &d.Sequence); err != nil {
			return err
		}
		d.Expression = json.RawMessage(expr)
		if t := s.Topics[topicID]; t != nil {
			t.Derived = append(t.Derived, d)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("load derived parameter definitions: %w", err)
	}
	if err := each(ctx, q, `select id, organization_id, device_type_id, external_id, is_active
		from devices where deleted_at is null`, func(r pgx.Rows) error {
		var d Device
		if err := r.Scan(&d.ID, &d.OrganizationID, &d.DeviceTypeID, &d.ExternalID, &d.Active); err != nil {
			return err
		}
		s.Devices[d.ID] = &d
		s.DevicesByExternalID[d.ExternalID] = &d
		return nil
	}); err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	for _, t := range s.Topics {
		sort.SliceStable(t.Parameters, func(i, j int) bool { return t.Parameters[i].Sequence < t.Parameters[j].Sequence })
	}
	return s, nil
}

func each(ctx context.Context, q Querier, sql string, fn func(pgx.Rows) error) error {
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Resolution is what a subject names.
type Resolution struct {
	Organization *Organization
	DeviceType   *DeviceType
	Device       *Device
	Topic        *Topic
}

// ResolveError says why a subject names no known device topic.
type ResolveError struct {
	Subject string
	Reason  string
	// Code is the stable code of Reason: reason.InvalidSubject,
	// reason.UnknownDevice or reason.UnknownTopic.
	Code string
}

func (e *ResolveError) Error() string { return fmt.Sprintf("subject %q: %s", e.Subject, e.Reason) }

// Resolve maps a subject `<base>.<external id or uuid>.<suffix>` to its
// device and topic. The device is found by external id first, then by uuid.
func (s *Snapshot) Resolve(subject string) (*Resolution, error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return nil, &ResolveError{Subject: subject, Reason: "not of the form <base>.<device>.<topic>", Code: reason.InvalidSubject}
	}
	base, id, suffix := parts[0], parts[1], parts[2]
	dev := s.DevicesByExternalID[id]
	if dev == nil {
		if u, err := uuid.Parse(id); err == nil {
			dev = s.Devices[u]
		}
	}
	if dev == nil {
		return nil, &ResolveError{Subject: subject, Reason: fmt.Sprintf("unknown device %q", id), Code: reason.UnknownDevice}
	}
	dt := s.DeviceTypes[dev.DeviceTypeID]
	if dt == nil {
		return nil, &ResolveError{Subject: subject, Reason: fmt.Sprintf("device %q has no device type", id), Code: reason.UnknownTopic}
	}
	if dt.BaseTopic != base {
		return nil, &ResolveError{Subject: subject, Reason: fmt.Sprintf("unknown topic: device type %q publishes under %q, not %q", dt.Name, dt.BaseTopic, base),
			Code: reason.UnknownTopic}
	}
	t := dt.Topics[suffix]
	if t == nil {
		return nil, &ResolveError{Subject: subject, Reason: fmt.Sprintf("unknown topic %q for device type %q", suffix, dt.Name), Code: reason.UnknownTopic}
	}
	return &Resolution{Organization: s.Organizations[dev.OrganizationID], DeviceType: dt, Device: dev, Topic: t}, nil
}
