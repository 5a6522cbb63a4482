package main

import (
	"errors"
	"fmt"
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
need; the viewer reads everything and may flip the switches and replay; the
operator reads and writes every table but never changes the schema.

Roles are cluster-wide: --role-prefix keeps installations sharing a server
apart.`,
	}
	cmd.AddCommand(newRolesApplyCmd(e), newRolesListCmd(e))
	return cmd
}

func addRolePrefixFlag(fs *pflag.FlagSet, prefix *string) {
	fs.StringVar(prefix, "role-prefix", roles.DefaultPrefix, "prefix of every role name (roles are cluster-wide)")
}

func newRolesApplyCmd(e env) *cobra.Command {
	var (
		databaseURL string
		o           roles.Options
	)
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Create the roles, or bring existing ones back to exactly their grants (idempotent)",
		Long: `apply creates every role that is missing and corrects the others, in one
transaction: each logs in and is no superuser; the migrator owns every
object of --schema and may create in it, nobody else (PUBLIC included) may;
each role holds exactly the table privileges 'telemesh roles list' shows,
and grants beyond them are revoked.

Connect with --database-url as a superuser (or, on managed Postgres, the
provider's admin role) to the telemesh database, after 'telemesh migrate up'.
Run it again after every migration: new tables are granted to nobody until
then.

Passwords come from --<role>-password (TELEMESH_<ROLE>_PASSWORD) and reach
the server only as SCRAM-SHA-256 verifiers. A role given none keeps the one
it has, or is created without one, for certificate or peer authentication.`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&databaseURL, "database-url", "", "Postgres URL of the telemesh database, as a superuser (required)")
	addRolePrefixFlag(fs, &o.Prefix)
	fs.StringVar(&o.Schema, "schema", "public", "schema that holds the telemesh tables")
	fs.BoolVar(&o.DryRun, "dry-run", false, "print what would change and change nothing")
	passwords := map[string]*string{}
	for _, r := range roles.Roles() {
		flag := r.Name + "-password"
		passwords[r.Name] = fs.String(flag, "", "password of the "+r.Name+" role (printable ASCII)")
		config.MarkSecret(fs, flag)
	}
	config.MarkSecret(fs, "database-url")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
			return err
		}
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
		if databaseURL == "" {
			return config.Invalid("database-url", "required")
		}
		pool, err := openOpsPool(cmd, e, &databaseURL, "telemesh-roles")
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
	var prefix string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Print every role, who connects as it and its table privileges",
		Args:  cobra.NoArgs,
	}
	fs := cmd.Flags()
	addRolePrefixFlag(fs, &prefix)
	cmd.RunE = func(*cobra.Command, []string) error {
		if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
			return err
		}
		o := roles.Options{Prefix: prefix}
		if err := o.Check(); err != nil {
			return rolesInvalid(err)
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		for _, r := range roles.Roles() {
			fmt.Fprintf(tw, "%s\t%s\n", o.RoleName(r.Name), r.Purpose)
			if r.Owner {
				fmt.Fprintf(tw, "  (owner)\tevery table, partition and function; CREATE on the schema\n")
			}
			for _, g := range r.Grants {
				fmt.Fprintf(tw, "  %s\t%s\n", g.Table, g)
			}
		}
		return tw.Flush()
	}
	return cmd
}
