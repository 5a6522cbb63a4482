package roles

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// State is what one role of [Roles] holds in a database, as [Inspect]
// reads it.
type State struct {
	// Role is the role as specified.
	Role Role
	// Name is its full name, prefix included.
	Name string
	// Exists is false when the role has not been created.
	Exists bool
	// Differences say how an existing role differs from Role: what it
	// lacks and what it holds beyond it, in the words of SQL. Empty when
	// the role is exactly as specified.
	Differences []string
}

// Inspect reads what the roles of [Roles] hold in the database q is
// connected to, in o's schema, and compares it with what [Apply] makes of
// them: role attributes, connecting to the database, the schema's USAGE and
// CREATE, the migrator's ownership, and every table and column privilege.
// It changes nothing and needs no privilege beyond reading the catalogs. It
// returns [ErrNotMigrated] when the schema lacks tables the grants name.
func Inspect(ctx context.Context, q Querier, o Options) ([]State, error) {
	o = o.withDefaults()
	if !prefixRE.MatchString(o.Prefix) {
		return nil, fmt.Errorf("%w: %q", ErrBadPrefix, o.Prefix)
	}
	if err := checkTables(ctx, q, o.Schema); err != nil {
		return nil, err
	}
	var out []State
	for _, r := range Roles() {
		s := State{Role: r, Name: o.RoleName(r.Name)}
		var (
			login, super, createDB, createRole, replication, bypassRLS bool
			connect, usage, create, owned                              bool
			notOwned                                                   int
		)
		err := q.QueryRow(ctx, `select rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,
				has_database_privilege(rolname, current_database(), 'CONNECT'),
				has_schema_privilege(rolname, $2, 'USAGE'), has_schema_privilege(rolname, $2, 'CREATE'),
				exists (select 1 from pg_namespace n where n.nspname = $2 and n.nspowner = r.oid),
				(select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
					where n.nspname = $2 and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S') and c.relowner <> r.oid
					  and not (c.relkind = 'S' and exists (select 1 from pg_depend d
						where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('a', 'i'))))
				+ (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
					where n.nspname = $2 and p.proowner <> r.oid)
			from pg_roles r where rolname = $1`, s.Name, o.Schema).Scan(
			&login, &super, &createDB, &createRole, &replication, &bypassRLS, &connect, &usage, &create, &owned, &notOwned)
		if errors.Is(err, pgx.ErrNoRows) {
			out = append(out, s)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("roles: look up %s: %w", s.Name, err)
		}
		s.Exists = true
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
		if len(attrs) > 0 {
			s.Differences = append(s.Differences, "needs "+strings.Join(attrs, " "))
		}
		if !connect {
			s.Differences = append(s.Differences, "lacks CONNECT on the database")
		}
		if !usage {
			s.Differences = append(s.Differences, "lacks USAGE on schema "+o.Schema)
		}
		switch {
		case r.Owner && !create:
			s.Differences = append(s.Differences, "lacks CREATE on schema "+o.Schema)
		case !r.Owner && create && !owned:
			// Through PUBLIC or a grant of its own, either way more than
			// a stage needs.
			s.Differences = append(s.Differences, "also CREATE on schema "+o.Schema)
		}
		if r.Owner && notOwned > 0 {
			noun := "objects"
			if notOwned == 1 {
				noun = "object"
			}
			s.Differences = append(s.Differences, fmt.Sprintf("does not own %d %s of schema %s", notOwned, noun, o.Schema))
		}
		have, err := readGrants(ctx, q, o.Schema, s.Name)
		if err != nil {
			return nil, err
		}
		d := diff(r.Grants, have)
		for _, t := range d.tables() {
			if g, ok := d.grant[t]; ok {
				s.Differences = append(s.Differences, "lacks "+g.String()+" on "+t)
			}
			if g, ok := d.revoke[t]; ok {
				s.Differences = append(s.Differences, "also "+g.String()+" on "+t)
			}
		}
		out = append(out, s)
	}
	return out, nil
}
