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

// databaseAndSchema lets every role connect and use the schema and lets
// only the migrator create in it; the migrations take CREATE from PUBLIC
// (the default before Postgres 15).
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
