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
// a privilege the migrator does not have.
package roles

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
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

var (
	// ErrBadPrefix is the error for a role prefix that is not a lower-case
	// identifier or leaves no room for the role names.
	ErrBadPrefix = errors.New("role prefix must be a lower-case identifier of at most 54 characters")
	// ErrBadPassword is the error for a password Apply cannot hash for
	// SCRAM exactly as clients will: only printable ASCII is accepted.
	ErrBadPassword = errors.New("password must be printable ASCII")
	// ErrUnknownRole is the error for a password given for a role that is
	// not one of [Roles].
	ErrUnknownRole = errors.New("no such telemesh role")
	// ErrNotMigrated is the error when the schema lacks tables the grants
	// name: migrate first.
	ErrNotMigrated = errors.New("schema is not migrated; run telemesh migrate up first")
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
	switchColumns = []string{"pipeline_enabled", "publish_analytics", "publish_invalid_events", "updated_by", "updated_at"}

	// settingsTables tune the schema; only the migrator changes them.
	settingsTables = []string{"telemesh_partition_storage"}
)

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
			Name:    "gateway",
			Purpose: "telemesh serve gateway",
			Grants: stage(
				// Dead letters are inserted (gateway.go deadLetter); parked
				// messages are claimed FOR UPDATE and put back (park.go),
				// which changes their status alone.
				Grant{Table: "ingestion_messages", Privileges: []string{Select, Insert}, Columns: updateOf("status", "updated_at")},
			),
		},
		{
			Name:    "validator",
			Purpose: "telemesh serve validator",
			Grants: stage(
				// The duplicate check reads earlier messages by dedupe key.
				Grant{Table: "ingestion_messages", Privileges: []string{Select}},
			),
		},
		{
			Name:    "deriver",
			Purpose: "telemesh serve deriver",
			Grants:  stage(),
		},
		{
			Name:    "persister",
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
			Name:    "publisher",
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

// Options say how to apply the roles.
type Options struct {
	// Prefix starts every role name; [DefaultPrefix] when empty. Roles are
	// cluster-wide: a prefix keeps two installations (or two tests) on one
	// server apart.
	Prefix string
	// Schema holds the telemesh tables; "public" when empty.
	Schema string
	// Passwords maps a role's name without prefix (gateway) to its
	// password. A role with none keeps the password it has, or is created
	// without one, for certificate or peer authentication. Passwords are
	// sent to the server only as SCRAM-SHA-256 verifiers.
	Passwords map[string]string
	// DryRun works out every change and rolls it back.
	DryRun bool
}

func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Schema == "" {
		o.Schema = "public"
	}
	return o
}

var prefixRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,53}$`)

// Check reports whether the options can be applied: a usable prefix, and
// printable ASCII passwords for known roles only.
func (o Options) Check() error {
	o = o.withDefaults()
	if !prefixRE.MatchString(o.Prefix) {
		return fmt.Errorf("%w: %q", ErrBadPrefix, o.Prefix)
	}
	for name, pw := range o.Passwords {
		if !slices.ContainsFunc(Roles(), func(r Role) bool { return r.Name == name }) {
			return fmt.Errorf("%w: %q", ErrUnknownRole, name)
		}
		if err := CheckPassword(pw); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// CheckPassword reports whether Apply can set password: printable ASCII,
// which SASLprep leaves as it is, so the verifier Apply computes is the one
// clients prove. It returns [ErrBadPassword] otherwise.
func CheckPassword(password string) error {
	for _, c := range []byte(password) {
		if c < 0x20 || c > 0x7e {
			return ErrBadPassword
		}
	}
	return nil
}

// RoleName returns the full name of the role called name.
func (o Options) RoleName(name string) string { return o.withDefaults().Prefix + name }

// Summary is what [Apply] changed, or would change on a dry run.
type Summary struct {
	Schema  string
	DryRun  bool
	Changes []string
}

// Beginner starts transactions: a *pgx.Conn or a *pgxpool.Pool.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Apply brings the roles of [Roles] about in the database db is connected
// to. It must run as a superuser, or as a role that may create roles and
// owns (or is a member of the owner of) the telemesh objects; once they
// exist and the migrator owns everything, the migrator itself may run it
// to grant a new migration's tables.
func Apply(ctx context.Context, db Beginner, o Options) (*Summary, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("roles: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	a := &applier{tx: tx, o: o, sum: &Summary{Schema: o.Schema, DryRun: o.DryRun}}
	if err := a.run(ctx); err != nil {
		return nil, err
	}
	if o.DryRun {
		return a.sum, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("roles: commit: %w", err)
	}
	return a.sum, nil
}

// applier is one run of Apply.
type applier struct {
	tx  pgx.Tx
	o   Options
	sum *Summary
}

func (a *applier) changed(format string, args ...any) {
	a.sum.Changes = append(a.sum.Changes, fmt.Sprintf(format, args...))
}

func (a *applier) exec(ctx context.Context, sql string, args ...any) error {
	if _, err := a.tx.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("roles: %s: %w", firstWords(sql), err)
	}
	return nil
}

func (a *applier) run(ctx context.Context) error {
	// Two runs at once would race to create the same roles.
	if err := a.exec(ctx, `select pg_advisory_xact_lock(hashtext('telemesh_roles'))`); err != nil {
		return err
	}
	if err := checkTables(ctx, a.tx, a.o.Schema); err != nil {
		return err
	}
	for _, r := range Roles() {
		if err := a.ensureRole(ctx, r); err != nil {
			return err
		}
	}
	if err := a.databaseAndSchema(ctx); err != nil {
		return err
	}
	if err := a.ownership(ctx); err != nil {
		return err
	}
	for _, r := range Roles() {
		if err := a.grants(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// checkTables makes sure every table the grants name exists in schema.
func checkTables(ctx context.Context, q Querier, schema string) error {
	rows, err := q.Query(ctx, `select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where n.nspname = $1 and c.relname = any($2) and c.relkind in ('r', 'p')`, schema, Tables())
	if err != nil {
		return fmt.Errorf("roles: list tables: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("roles: list tables: %w", err)
	}
	var missing []string
	for _, t := range Tables() {
		if !slices.Contains(found, t) {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: schema %s has no %s", ErrNotMigrated, schema, strings.Join(missing, ", "))
	}
	return nil
}

// ensureRole creates the role or corrects its attributes: it logs in, and
// is no superuser and may not create databases or roles, replicate or
// bypass row security.
func (a *applier) ensureRole(ctx context.Context, r Role) error {
	name := a.o.RoleName(r.Name)
	ident := pgx.Identifier{name}.Sanitize()
	var password string
	if pw := a.o.Passwords[r.Name]; pw != "" {
		v, err := newVerifier(pw)
		if err != nil {
			return err
		}
		password = " PASSWORD " + quoteLiteral(v)
	}
	var login, super, createDB, createRole, replication, bypassRLS bool
	err := a.tx.QueryRow(ctx, `select rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls
		from pg_roles where rolname = $1`, name).Scan(&login, &super, &createDB, &createRole, &replication, &bypassRLS)
	if errors.Is(err, pgx.ErrNoRows) {
		if err := a.exec(ctx, "CREATE ROLE "+ident+" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"+password); err != nil {
			return err
		}
		if password != "" {
			a.changed("%s: created, with a password", name)
		} else {
			a.changed("%s: created, without a password", name)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("roles: look up %s: %w", name, err)
	}
	var attrs []string
	for _, c := range []struct {
		wrong bool
		fix   string
	}{
		{!login, "LOGIN"}, {super, "NOSUPERUSER"}, {createDB, "NOCREATEDB"}, {createRole, "NOCREATEROLE"},
		{replication, "NOREPLICATION"}, {bypassRLS, "NOBYPASSRLS"},
	} {
		if c.wrong {
			attrs = append(attrs, c.fix)
		}
	}
	if len(attrs) == 0 && password == "" {
		return nil
	}
	if err := a.exec(ctx, "ALTER ROLE "+ident+" WITH "+strings.Join(attrs, " ")+password); err != nil {
		return err
	}
	if len(attrs) > 0 {
		a.changed("%s: set %s", name, strings.Join(attrs, " "))
	}
	if password != "" {
		a.changed("%s: password set", name)
	}
	return nil
}

// databaseAndSchema lets every role connect and use the schema, lets only
// the migrator create in it, and takes CREATE from PUBLIC (the default
// before Postgres 15).
func (a *applier) databaseAndSchema(ctx context.Context) error {
	var db string
	if err := a.tx.QueryRow(ctx, `select current_database()`).Scan(&db); err != nil {
		return fmt.Errorf("roles: current database: %w", err)
	}
	schema := pgx.Identifier{a.o.Schema}.Sanitize()
	for _, r := range Roles() {
		name := a.o.RoleName(r.Name)
		ident := pgx.Identifier{name}.Sanitize()
		var connect, usage, create, directCreate bool
		err := a.tx.QueryRow(ctx, `select has_database_privilege($1, current_database(), 'CONNECT'),
				has_schema_privilege($1, $2, 'USAGE'), has_schema_privilege($1, $2, 'CREATE'),
				exists (select 1 from pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) x
					where n.nspname = $2 and x.grantee = (select oid from pg_roles where rolname = $1) and x.privilege_type = 'CREATE')`,
			name, a.o.Schema).Scan(&connect, &usage, &create, &directCreate)
		if err != nil {
			return fmt.Errorf("roles: privileges of %s: %w", name, err)
		}
		if !connect {
			if err := a.exec(ctx, "GRANT CONNECT ON DATABASE "+pgx.Identifier{db}.Sanitize()+" TO "+ident); err != nil {
				return err
			}
			a.changed("%s: granted CONNECT on database %s", name, db)
		}
		if !usage {
			if err := a.exec(ctx, "GRANT USAGE ON SCHEMA "+schema+" TO "+ident); err != nil {
				return err
			}
			a.changed("%s: granted USAGE on schema %s", name, a.o.Schema)
		}
		if r.Owner && !create {
			if err := a.exec(ctx, "GRANT CREATE ON SCHEMA "+schema+" TO "+ident); err != nil {
				return err
			}
			a.changed("%s: granted CREATE on schema %s", name, a.o.Schema)
		}
		if !r.Owner && directCreate {
			if err := a.exec(ctx, "REVOKE CREATE ON SCHEMA "+schema+" FROM "+ident); err != nil {
				return err
			}
			a.changed("%s: revoked CREATE on schema %s", name, a.o.Schema)
		}
	}
	var publicCreate bool
	err := a.tx.QueryRow(ctx, `select exists (select 1 from pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) x
		where n.nspname = $1 and x.grantee = 0 and x.privilege_type = 'CREATE')`, a.o.Schema).Scan(&publicCreate)
	if err != nil {
		return fmt.Errorf("roles: privileges of PUBLIC: %w", err)
	}
	if publicCreate {
		if err := a.exec(ctx, "REVOKE CREATE ON SCHEMA "+schema+" FROM PUBLIC"); err != nil {
			return err
		}
		a.changed("PUBLIC: revoked CREATE on schema %s", a.o.Schema)
	}
	return nil
}

// ownership hands every table, partition, view, sequence and function of
// the schema to the migrator. Indexes and a column's sequence follow their
// table.
func (a *applier) ownership(ctx context.Context) error {
	owner := a.o.RoleName("migrator")
	ownerIdent := pgx.Identifier{owner}.Sanitize()
	rows, err := a.tx.Query(ctx, `
		select case c.relkind when 'S' then 'SEQUENCE' when 'v' then 'VIEW' when 'm' then 'MATERIALIZED VIEW'
				when 'f' then 'FOREIGN TABLE' else 'TABLE' end, c.relname
		from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where n.nspname = $1 and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
		  and c.relowner <> (select oid from pg_roles where rolname = $2)
		  and not (c.relkind = 'S' and exists (select 1 from pg_depend d
				where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('a', 'i')))
		order by c.relname`, a.o.Schema, owner)
	if err != nil {
		return fmt.Errorf("roles: objects to hand over: %w", err)
	}
	type object struct{ kind, name string }
	objs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (object, error) {
		var o object
		return o, r.Scan(&o.kind, &o.name)
	})
	if err != nil {
		return fmt.Errorf("roles: objects to hand over: %w", err)
	}
	for _, ob := range objs {
		if err := a.exec(ctx, "ALTER "+ob.kind+" "+pgx.Identifier{a.o.Schema, ob.name}.Sanitize()+" OWNER TO "+ownerIdent); err != nil {
			return err
		}
	}
	rows, err = a.tx.Query(ctx, `select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
		where n.nspname = $1 and p.proowner <> (select oid from pg_roles where rolname = $2) order by 1`, a.o.Schema, owner)
	if err != nil {
		return fmt.Errorf("roles: functions to hand over: %w", err)
	}
	funcs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("roles: functions to hand over: %w", err)
	}
	for _, f := range funcs {
		// regprocedure's text is the function's quoted, schema-qualified
		// signature when the schema is not on the search path.
		if err := a.exec(ctx, "ALTER ROUTINE "+f+" OWNER TO "+ownerIdent); err != nil {
			return err
		}
	}
	if n := len(objs) + len(funcs); n > 0 {
		a.changed("%s: now owns %d more objects of schema %s (%d tables, partitions and sequences, %d functions)",
			owner, n, a.o.Schema, len(objs), len(funcs))
	}
	return nil
}

// grants brings the role's privileges on the relations of the schema to
// exactly those of r.Grants: first the table-wide ones, then the column
// ones, read again because revoking a table-wide privilege also revokes it
// from every column.
func (a *applier) grants(ctx context.Context, r Role) error {
	name := a.o.RoleName(r.Name)
	ident := pgx.Identifier{name}.Sanitize()
	have, err := readGrants(ctx, a.tx, a.o.Schema, name)
	if err != nil {
		return err
	}
	d := diff(r.Grants, have)
	for _, t := range d.tables() {
		table := pgx.Identifier{a.o.Schema, t}.Sanitize()
		if revoke := d.revoke[t].Privileges; len(revoke) > 0 {
			if err := a.exec(ctx, "REVOKE "+strings.Join(revoke, ", ")+" ON TABLE "+table+" FROM "+ident); err != nil {
				return err
			}
			a.changed("%s: revoked %s on %s", name, strings.Join(revoke, ", "), t)
		}
		if grant := d.grant[t].Privileges; len(grant) > 0 {
			if err := a.exec(ctx, "GRANT "+strings.Join(grant, ", ")+" ON TABLE "+table+" TO "+ident); err != nil {
				return err
			}
			a.changed("%s: granted %s on %s", name, strings.Join(grant, ", "), t)
		}
	}

	if have, err = readGrants(ctx, a.tx, a.o.Schema, name); err != nil {
		return err
	}
	d = diff(r.Grants, have)
	for _, t := range d.tables() {
		table := pgx.Identifier{a.o.Schema, t}.Sanitize()
		var privs []string
		for p := range d.revoke[t].Columns {
			privs = append(privs, p)
		}
		for p := range d.grant[t].Columns {
			privs = append(privs, p)
		}
		for _, p := range sortPrivileges(privs) {
			if cols := d.revoke[t].Columns[p]; len(cols) > 0 {
				if err := a.exec(ctx, "REVOKE "+p+" ("+columnList(cols)+") ON TABLE "+table+" FROM "+ident); err != nil {
					return err
				}
				a.changed("%s: revoked %s (%s) on %s", name, p, strings.Join(cols, ", "), t)
			}
			if cols := d.grant[t].Columns[p]; len(cols) > 0 {
				if err := a.exec(ctx, "GRANT "+p+" ("+columnList(cols)+") ON TABLE "+table+" TO "+ident); err != nil {
					return err
				}
				a.changed("%s: granted %s (%s) on %s", name, p, strings.Join(cols, ", "), t)
			}
		}
	}
	return nil
}

// columnList quotes columns for a GRANT or REVOKE.
func columnList(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = pgx.Identifier{c}.Sanitize()
	}
	return strings.Join(q, ", ")
}

// Querier runs queries: a pgx.Tx, a *pgx.Conn or a *pgxpool.Pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// readGrants returns the table and column privileges role holds on the
// relations of schema, by table, as [merge] orders them. Privileges an
// owner holds by owning are not grants and are left out.
func readGrants(ctx context.Context, q Querier, schema, role string) ([]Grant, error) {
	rows, err := q.Query(ctx, `
		select c.relname, null::text, x.privilege_type, 0
		from pg_class c join pg_namespace n on n.oid = c.relnamespace, aclexplode(c.relacl) x
		where n.nspname = $1 and c.relkind in ('r', 'p', 'v', 'm', 'f')
		  and x.grantee = (select oid from pg_roles where rolname = $2) and c.relowner <> x.grantee
		union all
		select c.relname, a.attname::text, x.privilege_type, a.attnum
		from pg_class c join pg_namespace n on n.oid = c.relnamespace
			join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped, aclexplode(a.attacl) x
		where n.nspname = $1 and c.relkind in ('r', 'p', 'v', 'm', 'f')
		  and x.grantee = (select oid from pg_roles where rolname = $2) and c.relowner <> x.grantee
		order by 1, 4`, schema, role)
	if err != nil {
		return nil, fmt.Errorf("roles: privileges of %s: %w", role, err)
	}
	var gs []Grant
	for rows.Next() {
		var (
			table, priv string
			column      *string
			attnum      int
		)
		if err := rows.Scan(&table, &column, &priv, &attnum); err != nil {
			rows.Close()
			return nil, fmt.Errorf("roles: privileges of %s: %w", role, err)
		}
		g := Grant{Table: table}
		if column == nil {
			g.Privileges = []string{priv}
		} else {
			g.Columns = map[string][]string{priv: {*column}}
		}
		gs = append(gs, g)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("roles: privileges of %s: %w", role, err)
	}
	return mergeHeld(gs), nil
}

// mergeHeld folds privileges read from the database together like [merge],
// but keeps a column privilege beside the table-wide one: both are held,
// and revoking one leaves the other.
func mergeHeld(gs []Grant) []Grant {
	byTable := map[string]map[string][]string{}
	for _, g := range gs {
		for p, cols := range g.Columns {
			if byTable[g.Table] == nil {
				byTable[g.Table] = map[string][]string{}
			}
			byTable[g.Table][p] = append(byTable[g.Table][p], cols...)
		}
	}
	out := merge(gs)
	for i := range out {
		if cols := byTable[out[i].Table]; cols != nil {
			out[i].Columns = cols
		}
	}
	return out
}

// grantDiff is what it takes to go from the privileges held to those
// wanted, by table.
type grantDiff struct {
	grant, revoke map[string]Grant
}

// tables returns the tables with something to grant or revoke, sorted.
func (d grantDiff) tables() []string {
	var ts []string
	for t := range d.grant {
		ts = append(ts, t)
	}
	for t := range d.revoke {
		if _, ok := d.grant[t]; !ok {
			ts = append(ts, t)
		}
	}
	slices.Sort(ts)
	return ts
}

// diff compares the privileges wanted with those held. Column lists keep
// the order of want (for grants) and of have (for revokes).
func diff(want, have []Grant) grantDiff {
	d := grantDiff{grant: map[string]Grant{}, revoke: map[string]Grant{}}
	index := func(gs []Grant) map[string]Grant {
		m := map[string]Grant{}
		for _, g := range gs {
			m[g.Table] = g
		}
		return m
	}
	w, h := index(want), index(have)
	// missing returns what a holds and b lacks.
	missing := func(a, b Grant) Grant {
		out := Grant{Table: a.Table}
		for _, p := range a.Privileges {
			if !slices.Contains(b.Privileges, p) {
				out.Privileges = append(out.Privileges, p)
			}
		}
		slices.SortFunc(out.Privileges, comparePrivileges)
		for p, cols := range a.Columns {
			for _, c := range cols {
				if !slices.Contains(b.Columns[p], c) {
					if out.Columns == nil {
						out.Columns = map[string][]string{}
					}
					out.Columns[p] = append(out.Columns[p], c)
				}
			}
		}
		return out
	}
	empty := func(g Grant) bool { return len(g.Privileges) == 0 && len(g.Columns) == 0 }
	for t, g := range w {
		if m := missing(g, h[t]); !empty(m) {
			d.grant[t] = m
		}
	}
	for t, g := range h {
		if m := missing(g, w[t]); !empty(m) {
			d.revoke[t] = m
		}
	}
	return d
}

// Drop removes the roles with o's prefix from the server: what the
// migrator owns in the connected database passes to the connected user,
// the roles' privileges are revoked, then the roles are dropped. It is for
// tests and for undoing an Apply; a role that still owns objects in another
// database makes it fail.
func Drop(ctx context.Context, db Beginner, o Options) error {
	o = o.withDefaults()
	if !prefixRE.MatchString(o.Prefix) {
		return fmt.Errorf("%w: %q", ErrBadPrefix, o.Prefix)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("roles: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var existing []string
	for _, r := range Roles() {
		var n int
		if err := tx.QueryRow(ctx, `select count(*) from pg_roles where rolname = $1`, o.RoleName(r.Name)).Scan(&n); err != nil {
			return fmt.Errorf("roles: look up %s: %w", o.RoleName(r.Name), err)
		}
		if n == 1 {
			existing = append(existing, pgx.Identifier{o.RoleName(r.Name)}.Sanitize())
		}
	}
	if len(existing) == 0 {
		return nil
	}
	for _, sql := range []string{
		"REASSIGN OWNED BY " + strings.Join(existing, ", ") + " TO CURRENT_USER",
		"DROP OWNED BY " + strings.Join(existing, ", "),
		"DROP ROLE " + strings.Join(existing, ", "),
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("roles: %s: %w", firstWords(sql), err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("roles: commit: %w", err)
	}
	return nil
}

// newVerifier returns the SCRAM-SHA-256 verifier of password with a fresh
// salt.
func newVerifier(password string) (string, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("roles: salt: %w", err)
	}
	return scramVerifier(password, salt, scramIterations)
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// firstWords names a statement in an error by its first words, never by a
// password it may carry.
func firstWords(sql string) string {
	f := strings.Fields(sql)
	if len(f) > 3 {
		f = f[:3]
	}
	return strings.ToLower(strings.Join(f, " "))
}
