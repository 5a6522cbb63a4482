// Package schema applies device types, their topics, parameters and derived
// parameters from a YAML or JSON file, refusing definitions that could never
// work: a derived value that closes a cycle, an expression that reads a name
// its topic does not define, a rule that does not fit its type, an
// expression that is not JSON-Logic.
package schema

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.yaml.in/yaml/v3"

	"github.com/telemesh/telemesh/internal/catalog"
)

// ErrInvalid is the cause of every definition the file gets wrong.
var ErrInvalid = errors.New("invalid schema")

// File is what `telemesh schema apply` reads.
type File struct {
	// Organization is the slug of the organization the types belong to; it
	// is created when missing.
	Organization     string       `json:"organization" yaml:"organization"`
	OrganizationName string       `json:"organization_name,omitempty" yaml:"organization_name"`
	DeviceTypes      []DeviceType `json:"device_types" yaml:"device_types"`
}

// DeviceType is one device type and its topics.
type DeviceType struct {
	Name      string  `json:"name" yaml:"name"`
	BaseTopic string  `json:"base_topic,omitempty" yaml:"base_topic"`
	Topics    []Topic `json:"topics" yaml:"topics"`
}

// Topic is one subject suffix with its definitions.
type Topic struct {
	Suffix     string      `json:"suffix" yaml:"suffix"`
	Parameters []Parameter `json:"parameters" yaml:"parameters"`
	Derived    []Derived   `json:"derived" yaml:"derived"`
}

// Parameter is a parameter definition.
type Parameter struct {
	Key      string        `json:"key" yaml:"key"`
	JSONPath string        `json:"json_path" yaml:"json_path"`
	Type     string        `json:"type" yaml:"type"`
	Required bool          `json:"required,omitempty" yaml:"required"`
	Critical bool          `json:"critical,omitempty" yaml:"critical"`
	Rules    catalog.Rules `json:"rules,omitempty" yaml:"rules"`
	// Mutation is JSON-Logic over the extracted value val, the only
	// variable it may read.
	Mutation any `json:"mutation,omitempty" yaml:"mutation"`
	Sequence int `json:"sequence,omitempty" yaml:"sequence"`
}

// Derived is a derived parameter definition; the expression is JSON-Logic
// as the system telemesh replaces stores it, reading the topic's parameters
// and derived parameters.
type Derived struct {
	Key          string   `json:"key" yaml:"key"`
	Type         string   `json:"type" yaml:"type"`
	Expression   any      `json:"expression" yaml:"expression"`
	Dependencies []string `json:"dependencies,omitempty" yaml:"dependencies"`
	Sequence     int      `json:"sequence,omitempty" yaml:"sequence"`
}

// Parse reads a file in YAML or JSON (JSON is YAML).
func Parse(b []byte) (*File, error) {
	var f File
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if f.Organization == "" {
		return nil, fmt.Errorf("%w: organization is required", ErrInvalid)
	}
	return &f, nil
}

// Checks are the definition checks of the stages that use the definitions:
// the validator's for parameters, the deriver's for a topic's set.
type Checks struct {
	Parameter func(catalog.Parameter) error
	Topic     func([]catalog.Parameter, []catalog.Derived) error
}

// toJSON turns a YAML-decoded expression into JSON text; YAML maps decode
// with string keys, so encoding/json takes them.
func toJSON(v any) (json.RawMessage, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	return json.RawMessage(b), err
}

// catalogTopic converts a topic for the checks and for storage.
func catalogTopic(t Topic) ([]catalog.Parameter, []catalog.Derived, error) {
	params := make([]catalog.Parameter, len(t.Parameters))
	for i, p := range t.Parameters {
		m, err := toJSON(p.Mutation)
		if err != nil {
			return nil, nil, fmt.Errorf("parameter %s: mutation: %w", p.Key, err)
		}
		params[i] = catalog.Parameter{Key: p.Key, JSONPath: p.JSONPath, DataType: p.Type, Required: p.Required,
			Critical: p.Critical, Rules: p.Rules, Mutation: m, Sequence: p.Sequence}
	}
	derived := make([]catalog.Derived, len(t.Derived))
	for i, d := range t.Derived {
		e, err := toJSON(d.Expression)
		if err != nil || e == nil {
			return nil, nil, fmt.Errorf("derived %s: expression is required JSON-Logic", d.Key)
		}
		derived[i] = catalog.Derived{Key: d.Key, DataType: d.Type, Expression: e, Dependencies: d.Dependencies, Sequence: d.Sequence}
	}
	return params, derived, nil
}

// Check runs every check and returns all problems at once.
func Check(f *File, checks Checks) error {
	var errs []error
	for _, dt := range f.DeviceTypes {
		for _, t := range dt.Topics {
			where := fmt.Sprintf("%s/%s", dt.Name, t.Suffix)
			params, derived, err := catalogTopic(t)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
				continue
			}
			for _, p := range params {
				if err := checks.Parameter(p); err != nil {
					errs = append(errs, fmt.Errorf("%s: parameter %s: %w", where, p.Key, err))
				}
			}
			if err := checks.Topic(params, derived); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// Summary counts what Apply wrote.
type Summary struct {
	DeviceTypes, Topics, Parameters, Derived int
}

// Apply checks the file and writes it in one transaction: types, topics and
// definitions are created or updated; definitions missing from the file are
// left as they are.
func Apply(ctx context.Context, pool *pgxpool.Pool, f *File, checks Checks) (Summary, error) {
	var s Summary
	if err := Check(f, checks); err != nil {
		return s, err
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		name := f.OrganizationName
		if name == "" {
			name = f.Organization
		}
		var org string
		if err := tx.QueryRow(ctx, `insert into organizations (slug, name) values ($1, $2)
			on conflict (slug) do update set name = coalesce(nullif($2, ''), organizations.name) returning id::text`, f.Organization, name).Scan(&org); err != nil {
			return fmt.Errorf("organization %s: %w", f.Organization, err)
		}
		for _, dt := range f.DeviceTypes {
			base := dt.BaseTopic
			if base == "" {
				base = "devices"
			}
			var typeID string
			if err := tx.QueryRow(ctx, `insert into device_types (organization_id, name, base_topic) values ($1, $2, $3)
				on conflict (organization_id, name) do update set base_topic = excluded.base_topic returning id::text`, org, dt.Name, base).Scan(&typeID); err != nil {
				return fmt.Errorf("device type %s: %w", dt.Name, err)
			}
			s.DeviceTypes++
			for _, t := range dt.Topics {
				var topicID string
				if err := tx.QueryRow(ctx, `insert into device_type_topics (device_type_id, suffix) values ($1, $2)
					on conflict (device_type_id, suffix) do update set suffix = excluded.suffix returning id::text`, typeID, t.Suffix).Scan(&topicID); err != nil {
					return fmt.Errorf("topic %s/%s: %w", dt.Name, t.Suffix, err)
				}
				s.Topics++
				params, derived, _ := catalogTopic(t)
				for _, p := range params {
					rules, _ := json.Marshal(p.Rules)
					if _, err := tx.Exec(ctx, `insert into parameter_definitions (device_type_topic_id, key, json_path, data_type,
							required, critical, validation_rules, mutation_expression, sequence, is_active)
						values ($1, $2, $3, $4, $5, $6, $7, $8, $9, true)
						on conflict (device_type_topic_id, key) do update set json_path = excluded.json_path,
							data_type = excluded.data_type, required = excluded.required, critical = excluded.critical,
							validation_rules = excluded.validation_rules, mutation_expression = excluded.mutation_expression,
							sequence = excluded.sequence, is_active = true`,
						topicID, p.Key, p.JSONPath, p.DataType, p.Required, p.Critical, string(rules), nullJSON(p.Mutation), p.Sequence); err != nil {
						return fmt.Errorf("parameter %s: %w", p.Key, err)
					}
					s.Parameters++
				}
				for _, d := range derived {
					deps := d.Dependencies
					if deps == nil {
						deps = []string{}
					}
					if _, err := tx.Exec(ctx, `insert into derived_parameter_definitions (device_type_topic_id, key, data_type,
							expression, dependencies, sequence, is_active)
						values ($1, $2, $3, $4, $5, $6, true)
						on conflict (device_type_topic_id, key) do update set data_type = excluded.data_type,
							expression = excluded.expression, dependencies = excluded.dependencies,
							sequence = excluded.sequence, is_active = true`,
						topicID, d.Key, d.DataType, string(d.Expression), deps, d.Sequence); err != nil {
						return fmt.Errorf("derived %s: %w", d.Key, err)
					}
					s.Derived++
				}
			}
		}
		return nil
	})
	return s, err
}

func nullJSON(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}
