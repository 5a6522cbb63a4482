package roles

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

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
