// Package roles creates the Postgres roles telemesh runs as, with least
// privilege: a migrator that owns every telemesh object, one login role per
// stage holding only the table privileges its queries need, a viewer that
// reads everything and may flip the switches and replay, and an operator
// for the command-line tools.
//
// [Apply] is idempotent: it creates what is missing, corrects role
// attributes, hands every object of the schema to the migrator, and brings
// each role's table and column privileges to exactly those of [Roles],
// revoking any others, all in one transaction. Run it again after every
// `telemesh migrate up`: a table a new migration adds is granted to nobody
// until then. [Inspect] reads what the roles hold without changing it.
//
// UPDATE is granted on the columns a role's statements set, never on whole
// rows, so that no role but the migrator can rewrite what a message carried
// (its payload, its values, its dedupe key) or what a stage recorded.
//
// The grants live here rather than in a migration because role names carry
// a prefix chosen at apply time (roles are cluster-wide, and installations
// and tests sharing a server keep apart by prefix), and creating roles needs
// a privilege the migrator does not have. What names no role is a
// migration's: migration 00012 takes CREATE on the schema from PUBLIC.
//
// The catalog of roles and their grants is [Roles]; the rest of the
// package applies it ([Apply], [Drop]) and reads it back ([Inspect]).
package roles

import (
	"slices"
	"strings"

	"github.com/telemesh/telemesh/internal/pipeline"
)

// DefaultPrefix starts every role name unless [Options] says otherwise.
const DefaultPrefix = "telemesh_"

// The table privileges roles are given.
const (
	Select = "SELECT"
	Insert = "INSERT"
	Update = "UPDATE"
	Delete = "DELETE"
)

// Grant is the privileges of a role on one table.
type Grant struct {
	Table string
	// Privileges are held on the whole table.
	Privileges []string
	// Columns are privileges held on some columns only, by privilege:
	// {UPDATE: [status, updated_at]} lets the role update those two
	// columns and no other.
	Columns map[string][]string
}

// String lists the privileges as SQL names them: SELECT, INSERT,
// UPDATE (status, updated_at).
func (g Grant) String() string {
	var parts []string
	all := slices.Clone(g.Privileges)
	for p := range g.Columns {
		all = append(all, p)
	}
	for _, p := range sortPrivileges(all) {
		if slices.Contains(g.Privileges, p) {
			parts = append(parts, p)
		}
		if cols := g.Columns[p]; len(cols) > 0 {
			parts = append(parts, p+" ("+strings.Join(cols, ", ")+")")
		}
	}
	return strings.Join(parts, ", ")
}

// updateOf is the column privileges of a role that may UPDATE cols only.
func updateOf(cols ...string) map[string][]string {
	return map[string][]string{Update: cols}
}

// Role is one role telemesh uses.
type Role struct {
	// Name is the role's name without its prefix: migrator, gateway, ...
	Name string
	// Purpose says who connects as the role.
	Purpose string
	// Owner marks the migrator: it owns every object and needs no grants.
	Owner bool
	// Grants are the role's table and column privileges, by table name.
	Grants []Grant
}

// The tables the migrations create, by how the stages use them.
var (
	// definitionTables describe the fleet: what the operator curates with
	// schema apply and devices.
	definitionTables = []string{
		"organizations", "device_types", "device_type_topics", "devices",
		"parameter_definitions", "derived_parameter_definitions",
	}
	// catalogTables are what every stage loads into its catalog cache
	// (internal/catalog) and keeps fresh.
	catalogTables = append(slices.Clone(definitionTables), "pipeline_switches")
	// dataTables hold what happened to each message.
	dataTables = []string{"ingestion_messages", "device_telemetry_logs", "ingestion_stage_logs", "ingestion_stage_counts", "publish_outbox"}

	// switchColumns are what ops.SetSwitch sets of a pipeline_switches row.
	switchColumns = append(switchFlagColumns(), "updated_by", "updated_at")

	// settingsTables tune the schema; only the migrator changes them.
	settingsTables = []string{"telemesh_partition_storage"}
)

// switchFlagColumns are the pipeline_switches columns of the switches.
func switchFlagColumns() []string {
	var cols []string
	for _, s := range pipeline.Switches() {
		cols = append(cols, s.Column())
	}
	return cols
}

// Tables returns every table some role is granted privileges on.
func Tables() []string {
	return slices.Concat(catalogTables, dataTables, settingsTables)
}

// Roles returns every role, the migrator first. The privileges follow the
// SQL each one runs; the comments name where.
func Roles() []Role {
	// Every stage reads its catalog and appends its ingestion_stage_logs
	// rows (internal/stagelog, COPY), adding to their per-minute counts
	// (an upsert, which reads the row it adds to).
	stage := func(extra ...Grant) []Grant {
		g := []Grant{
			{Table: "ingestion_stage_logs", Privileges: []string{Insert}},
			{Table: "ingestion_stage_counts", Privileges: []string{Select, Insert}, Columns: updateOf("rows", "durations", "repeats", "example")},
		}
		for _, t := range catalogTables {
			g = append(g, Grant{Table: t, Privileges: []string{Select}})
		}
		return merge(append(g, extra...))
	}
	on := func(tables []string, privs ...string) []Grant {
		var g []Grant
		for _, t := range tables {
			g = append(g, Grant{Table: t, Privileges: privs})
		}
		return g
	}
	return []Role{
		{
			Name:    "migrator",
			Purpose: "owns every telemesh table, partition and function: telemesh migrate, and telemesh retention (which creates and drops partitions)",
			Owner:   true,
		},
		{
			Name:    string(pipeline.Gateway),
			Purpose: "telemesh serve gateway",
			Grants: stage(
				// Dead letters are inserted (gateway.go deadLetter); parked
				// messages are claimed FOR UPDATE and put back (park.go),
				// which changes their status alone.
				Grant{Table: "ingestion_messages", Privileges: []string{Select, Insert}, Columns: updateOf("status", "updated_at")},
			),
		},
		{
			Name:    string(pipeline.Validator),
			Purpose: "telemesh serve validator",
			Grants: stage(
				// The duplicate check reads earlier messages by dedupe key.
				Grant{Table: "ingestion_messages", Privileges: []string{Select}},
			),
		},
		{
			Name:    string(pipeline.Deriver),
			Purpose: "telemesh serve deriver",
			Grants:  stage(),
		},
		{
			Name:    string(pipeline.Persister),
			Purpose: "telemesh serve persister",
			Grants: stage(
				// One transaction: upsert the messages, completing a parked
				// one's row (insertMessages' ON CONFLICT), and COPY the
				// telemetry rows; rows the publisher could not take are
				// marked publish_failed (MarkPublishFailed), all in
				// services/persister/store.go.
				Grant{Table: "ingestion_messages", Privileges: []string{Select, Insert}, Columns: updateOf(
					"organization_id", "device_id", "status", "halted_stage", "error_summary",
					"delivery_attempts", "processed_at", "trace_id", "updated_at")},
				Grant{Table: "device_telemetry_logs", Privileges: []string{Select, Insert}, Columns: updateOf(
					"processing_state", "failure_reason", "next_publish_at", "publish_attempts", "updated_at")},
				// The rows to publish go in the outbox in the same
				// transaction; their lease is renewed while the publish is
				// under way, and they are made due later when the publisher
				// cannot be reached (internal/outbox Add, Renew, Delay).
				// Select: those updates name their entries by id.
				Grant{Table: "publish_outbox", Privileges: []string{Select, Insert}, Columns: updateOf("due_at", "attempts")},
			),
		},
		{
			Name:    string(pipeline.Publisher),
			Purpose: "telemesh serve publisher",
			Grants: stage(
				// Marks rows processed or publish_failed; the retry loop
				// claims due rows FOR UPDATE SKIP LOCKED
				// (services/publisher/store.go).
				Grant{Table: "device_telemetry_logs", Privileges: []string{Select}, Columns: updateOf(
					"processing_state", "failure_reason", "next_publish_at", "publish_attempts", "processed_at", "updated_at")},
				// It removes the outbox entries of the rows it recorded and
				// adds one for the rows that failed; the retry loop claims
				// due entries FOR UPDATE SKIP LOCKED (internal/outbox).
				Grant{Table: "publish_outbox", Privileges: []string{Select, Insert, Delete}, Columns: updateOf("due_at")},
			),
		},
		{
			Name:    "viewer",
			Purpose: "telemesh serve viewer, telemesh status, doctor and trace: reads everything, flips the switches and retries publishes",
			Grants: merge(append(on(Tables(), Select),
				// ops.SetSwitch upserts a switch row.
				Grant{Table: "pipeline_switches", Privileges: []string{Insert}, Columns: updateOf(switchColumns...)},
				// Retry makes publish_failed rows due now: an outbox entry
				// for them (internal/ops/replay.go, replay_rows.go).
				Grant{Table: "publish_outbox", Privileges: []string{Insert}},
			)),
		},
		{
			Name: "operator",
			Purpose: "the operator commands (schema apply, devices, flags, replay, trace, status, doctor): " +
				"reads every table, writes the catalog, flips the switches and replays; deletes nothing, never changes the schema",
			Grants: merge(append(on(definitionTables, Select, Insert, Update),
				Grant{Table: "pipeline_switches", Privileges: []string{Select, Insert}, Columns: updateOf(switchColumns...)},
				// Replays re-park stale queued messages and note a dead
				// letter's replay (internal/ops/replay.go); the rest of
				// what happened to a message stays as it was recorded.
				Grant{Table: "ingestion_messages", Privileges: []string{Select}, Columns: updateOf("status", "error_summary", "updated_at")},
				Grant{Table: "device_telemetry_logs", Privileges: []string{Select}},
				Grant{Table: "ingestion_stage_logs", Privileges: []string{Select}},
				Grant{Table: "ingestion_stage_counts", Privileges: []string{Select}},
				Grant{Table: "publish_outbox", Privileges: []string{Select, Insert}},
			)),
		},
	}
}

// merge folds grants on the same table together, sorted by table. A
// column privilege the table-wide one already covers is dropped.
func merge(gs []Grant) []Grant {
	by := map[string]*Grant{}
	var tables []string
	for _, g := range gs {
		m, ok := by[g.Table]
		if !ok {
			m = &Grant{Table: g.Table}
			by[g.Table] = m
			tables = append(tables, g.Table)
		}
		for _, p := range g.Privileges {
			if !slices.Contains(m.Privileges, p) {
				m.Privileges = append(m.Privileges, p)
			}
		}
		for p, cols := range g.Columns {
			for _, c := range cols {
				if m.Columns == nil {
					m.Columns = map[string][]string{}
				}
				if !slices.Contains(m.Columns[p], c) {
					m.Columns[p] = append(m.Columns[p], c)
				}
			}
		}
	}
	slices.Sort(tables)
	out := make([]Grant, 0, len(tables))
	for _, t := range tables {
		m := by[t]
		slices.SortFunc(m.Privileges, comparePrivileges)
		for p := range m.Columns {
			if slices.Contains(m.Privileges, p) {
				delete(m.Columns, p)
			}
		}
		if len(m.Columns) == 0 {
			m.Columns = nil
		}
		out = append(out, *m)
	}
	return out
}

// comparePrivileges orders privileges as SQL lists them: SELECT, INSERT,
// UPDATE, DELETE, then any other (TRUNCATE, REFERENCES, ...) by name.
func comparePrivileges(a, b string) int {
	order := []string{Select, Insert, Update, Delete}
	ia, ib := slices.Index(order, a), slices.Index(order, b)
	switch {
	case ia >= 0 && ib >= 0:
		return ia - ib
	case ia >= 0:
		return -1
	case ib >= 0:
		return 1
	}
	return strings.Compare(a, b)
}

// sortPrivileges returns ps without repeats, in [comparePrivileges] order.
func sortPrivileges(ps []string) []string {
	out := slices.Clone(ps)
	slices.SortFunc(out, comparePrivileges)
	return slices.Compact(out)
}
