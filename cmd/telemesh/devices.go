package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/pg"
)

// errNotFound is a device, type or organization the command names that does
// not exist.
var errNotFound = errors.New("not found")

func newDevicesCmd(e env) *cobra.Command {
	var databaseURL string
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "Add, list, activate and deactivate devices",
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&databaseURL, "database-url", "", "Postgres URL (required)")
	config.MarkSecret(pf, "database-url")
	open := func(cmd *cobra.Command) (*pgxpool.Pool, error) {
		if err := config.ApplyEnv(pf, e.lookupEnv); err != nil {
			return nil, err
		}
		if databaseURL == "" {
			return nil, config.Invalid("database-url", "required")
		}
		pool, err := pg.Open(cmd.Context(), databaseURL, pg.Options{ApplicationName: "telemesh-devices"})
		if err != nil {
			return nil, config.Invalid("database-url", "%v", err)
		}
		return pool, nil
	}

	var org, typ string
	var inactive bool
	add := &cobra.Command{
		Use:   "add EXTERNAL_ID",
		Short: "Add a device of an organization's device type",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, err := open(cmd)
			if err != nil {
				return err
			}
			defer pool.Close()
			var id string
			err = pool.QueryRow(cmd.Context(), `insert into devices (organization_id, device_type_id, external_id, name, is_active)
				select o.id, t.id, $3, $3, $4 from organizations o join device_types t on t.organization_id = o.id
				where o.slug = $1 and t.name = $2 returning id::text`, org, typ, args[0], !inactive).Scan(&id)
			if err != nil {
				if errors.Is(err, pgx.ErrNoRows) {
					return fmt.Errorf("device type %q of organization %q: %w", typ, org, errNotFound)
				}
				return fmt.Errorf("add device %s: %w", args[0], err)
			}
			_, err = fmt.Fprintf(e.stdout, "added %s (uuid %s, active %v)\n", args[0], id, !inactive)
			return err
		},
	}
	add.Flags().StringVar(&org, "organization", "", "organization slug")
	add.Flags().StringVar(&typ, "type", "", "device type name")
	add.Flags().BoolVar(&inactive, "inactive", false, "add it inactive")
	_ = add.MarkFlagRequired("organization")
	_ = add.MarkFlagRequired("type")

	var listOrg string
	list := &cobra.Command{
		Use:   "list",
		Short: "List live devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := open(cmd)
			if err != nil {
				return err
			}
			defer pool.Close()
			rows, err := pool.Query(cmd.Context(), `select o.slug, t.name, d.external_id, d.id::text, d.is_active, t.base_topic
				from devices d join organizations o on o.id = d.organization_id join device_types t on t.id = d.device_type_id
				where d.deleted_at is null and ($1 = '' or o.slug = $1) order by o.slug, d.external_id`, listOrg)
			if err != nil {
				return fmt.Errorf("list devices: %w", err)
			}
			defer rows.Close()
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ORGANIZATION\tTYPE\tEXTERNAL ID\tUUID\tACTIVE\tSUBJECT")
			for rows.Next() {
				var o, t, ext, id, base string
				var active bool
				if err := rows.Scan(&o, &t, &ext, &id, &active, &base); err != nil {
					return err
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s.%s.<topic>\n", o, t, ext, id, active, base, ext)
			}
			if err := rows.Err(); err != nil {
				return err
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&listOrg, "organization", "", "only this organization's devices")

	setActive := func(use string, active bool) *cobra.Command {
		return &cobra.Command{
			Use:   use + " EXTERNAL_ID|UUID",
			Short: fmt.Sprintf("Mark a device %s (is_active = %v)", map[bool]string{true: "active", false: "inactive"}[active], active),
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				pool, err := open(cmd)
				if err != nil {
					return err
				}
				defer pool.Close()
				tag, err := pool.Exec(cmd.Context(), `update devices set is_active = $2, updated_at = now()
					where deleted_at is null and (external_id = $1 or id::text = $1)`, args[0], active)
				if err != nil {
					return fmt.Errorf("%s %s: %w", use, args[0], err)
				}
				if tag.RowsAffected() == 0 {
					return fmt.Errorf("device %q: %w", args[0], errNotFound)
				}
				_, err = fmt.Fprintf(e.stdout, "%s is now %s\n", args[0], map[bool]string{true: "active", false: "inactive"}[active])
				return err
			},
		}
	}
	cmd.AddCommand(add, list, setActive("activate", true), setActive("deactivate", false))
	return cmd
}
