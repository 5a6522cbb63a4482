package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/roles"
)

// newRolesCmd returns the roles command, which sets up the Postgres roles
// telemesh runs as.
func newRolesCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "roles apply|list",
		Short: "Create or update the Postgres roles: a schema owner, one role per stage with only its grants, a viewer and an operator",
		Long: `roles sets up least privilege in Postgres. The migrator role owns every
telemesh table, partition and function and is the one that migrates; each
stage connects as its own role holding only the table privileges its queries
need, and UPDATE only on the columns it sets; the viewer reads everything and
may flip the switches and retry publishes; the operator reads every table,
writes the fleet's definitions and the switches and replays, deletes
nothing and never changes the schema.

apply and list take the same settings: the database from
TELEMESH_DATABASE_URL, --database-url-file or (the last resort)
--database-url, and --role-prefix and --schema. Roles are cluster-wide:
--role-prefix keeps installations sharing a server apart.`,
	}
	cmd.AddCommand(newRolesApplyCmd(e), newRolesListCmd(e))
	return cmd
}

// rolesTarget is what both roles commands act on: a database, a role
// prefix and a schema.
type rolesTarget struct {
	databaseURL string
	o           roles.Options
}

// addRolesTargetFlags registers the settings apply and list share.
func addRolesTargetFlags(fs *pflag.FlagSet, t *rolesTarget, dbUsage string) {
	fs.StringVar(&t.databaseURL, "database-url", "", dbUsage)
	fs.StringVar(&t.o.Prefix, "role-prefix", roles.DefaultPrefix, "prefix of every role name (roles are cluster-wide)")
	fs.StringVar(&t.o.Schema, "schema", "public", "schema that holds the telemesh tables")
	config.MarkSecret(fs, "database-url")
}

func newRolesApplyCmd(e env) *cobra.Command {
	var t rolesTarget
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Create the roles, or bring existing ones back to exactly their grants (idempotent)",
		Long: `apply creates every role that is missing and corrects the others, in one
transaction: each logs in and is no superuser; the migrator owns every
object of --schema and may create in it, no other role may (the migrations
take CREATE from PUBLIC); each role holds exactly the table and column privileges 'telemesh roles
list' shows, and grants beyond them are revoked.

Connect as a superuser (or, on managed Postgres, the provider's admin role)
to the telemesh database, after 'telemesh migrate up': TELEMESH_DATABASE_URL
or a file named by --database-url-file. Run it again after every migration:
new tables are granted to nobody until then.

Passwords come from TELEMESH_<ROLE>_PASSWORD or a file named by
--<role>-password-file (--<role>-password is the last resort) and reach
the server only as SCRAM-SHA-256 verifiers. A role given none keeps the one
it has, or is created without one, for certificate or peer authentication.`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	addRolesTargetFlags(fs, &t, "Postgres URL of the telemesh database, as a superuser (required)")
	fs.BoolVar(&t.o.DryRun, "dry-run", false, "print what would change and change nothing")
	passwords := map[string]*string{}
	for _, r := range roles.Roles() {
		flag := r.Name + "-password"
		passwords[r.Name] = fs.String(flag, "", "password of the "+r.Name+" role (printable ASCII)")
		config.MarkSecret(fs, flag)
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
			return err
		}
		o := t.o
		o.Passwords = map[string]string{}
		for _, r := range roles.Roles() {
			pw := *passwords[r.Name]
			if err := roles.CheckPassword(pw); err != nil {
				return config.Invalid(r.Name+"-password", "%v", err)
			}
			if pw != "" {
				o.Passwords[r.Name] = pw
			}
		}
		if err := o.Check(); err != nil {
			return rolesInvalid(err)
		}
		if t.databaseURL == "" {
			return config.Invalid("database-url", "required")
		}
		pool, err := openOpsPool(cmd, e, &t.databaseURL, "telemesh-roles")
		if err != nil {
			return err
		}
		defer pool.Close()
		sum, err := roles.Apply(cmd.Context(), pool, o)
		if err != nil {
			return err
		}
		verb := "changed"
		if sum.DryRun {
			verb = "would change"
		}
		for _, c := range sum.Changes {
			fmt.Fprintln(e.stdout, c)
		}
		if len(sum.Changes) == 0 {
			_, err = fmt.Fprintf(e.stdout, "roles %s* already as specified in schema %s\n", o.RoleName(""), sum.Schema)
			return err
		}
		_, err = fmt.Fprintf(e.stdout, "%s %d thing(s)\n", verb, len(sum.Changes))
		return err
	}
	return cmd
}

// rolesInvalid names the flag behind an invalid roles option.
func rolesInvalid(err error) error {
	if errors.Is(err, roles.ErrBadPrefix) {
		return config.Invalid("role-prefix", "%v", err)
	}
	return fmt.Errorf("%w: %v", config.ErrInvalid, err)
}

func newRolesListCmd(e env) *cobra.Command {
	var t rolesTarget
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Print every role, who connects as it and its privileges; with a database, whether the roles there hold exactly those",
		Long: `list prints every role, who connects as it, and the table and column
privileges 'telemesh roles apply' gives it. It needs no database for that.

Given a database (TELEMESH_DATABASE_URL, --database-url-file or
--database-url, as apply takes it), it also reads what each role holds there
in --schema and says, per role, whether it is as listed, does not exist, or
differs, and how: what it lacks and what it holds beyond the list. It
changes nothing and needs only to read the catalogs, so any role may run it.`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	addRolesTargetFlags(fs, &t, "Postgres URL of the telemesh database whose roles to compare with the list (optional)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
			return err
		}
		if err := t.o.Check(); err != nil {
			return rolesInvalid(err)
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		for _, r := range roles.Roles() {
			fmt.Fprintf(tw, "%s\t%s\n", t.o.RoleName(r.Name), r.Purpose)
			if r.Owner {
				fmt.Fprintf(tw, "  (owner)\tevery table, partition and function; CREATE on the schema\n")
			}
			for _, g := range r.Grants {
				fmt.Fprintf(tw, "  %s\t%s\n", g.Table, g)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if t.databaseURL == "" {
			return nil
		}
		pool, err := openOpsPool(cmd, e, &t.databaseURL, "telemesh-roles")
		if err != nil {
			return err
		}
		defer pool.Close()
		states, err := roles.Inspect(cmd.Context(), pool, t.o)
		if err != nil {
			return err
		}
		schema := t.o.Schema
		fmt.Fprintf(e.stdout, "\nin the database, schema %s:\n", schema)
		off := 0
		for _, s := range states {
			switch {
			case !s.Exists:
				off++
				fmt.Fprintf(e.stdout, "%s: does not exist\n", s.Name)
			case len(s.Differences) > 0:
				off++
				fmt.Fprintf(e.stdout, "%s: differs: %s\n", s.Name, strings.Join(s.Differences, "; "))
			default:
				fmt.Fprintf(e.stdout, "%s: as listed\n", s.Name)
			}
		}
		if off > 0 {
			_, err = fmt.Fprintf(e.stdout, "%d role(s) not as listed: run telemesh roles apply to bring them back\n", off)
		}
		return err
	}
	return cmd
}
