package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/pg"
)

func newDevicesCmd(e env) *cobra.Command {
	var databaseURL string
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "Add, list, activate and deactivate devices",
		Long: `devices adds, lists, activates and deactivates devices. A device id is one
token of the subject <base>.<device>.<topic>: 1 to 200 letters, digits, '_',
'-' or ':', unique across organizations. An argument that cannot be used (an
id in another form or already taken, an organization or device type that does
not exist) is refused with one line saying what is allowed, and exit code 2;
a device that activate or deactivate cannot find exits 1.`,
	}
	pf := cmd.PersistentFlags()
	addDatabaseURLFlag(pf, &databaseURL)
	open := func(cmd *cobra.Command) (*pgxpool.Pool, error) {
		if err := config.ApplyEnv(pf, e.lookupEnv); err != nil {
			return nil, err
		}
		if _, err := fromMesh(pf, e, "database-url"); err != nil {
			return nil, err
		}
		if databaseURL == "" {
			return nil, requiredDatabaseURL()
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
			// The id's form needs no database: say what is wrong with it first.
			if err := ops.CheckDeviceID(args[0]); err != nil {
				return err
			}
			pool, err := open(cmd)
			if err != nil {
				return err
			}
			defer pool.Close()
			id, err := ops.AddDevice(cmd.Context(), pool, ops.NewDevice{Organization: org, Type: typ, ExternalID: args[0], Active: !inactive})
			if err != nil {
				return err
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
			devices, err := ops.ListDevices(cmd.Context(), pool, listOrg)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ORGANIZATION\tTYPE\tEXTERNAL ID\tUUID\tACTIVE\tSUBJECT")
			for _, d := range devices {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s.%s.<topic>\n", d.Organization, d.Type, d.ExternalID, d.ID, d.Active, d.BaseTopic, d.ExternalID)
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&listOrg, "organization", "", "only this organization's devices")

	setActive := func(use string, active bool) *cobra.Command {
		state := map[bool]string{true: "active", false: "inactive"}[active]
		return &cobra.Command{
			Use:   use + " EXTERNAL_ID|UUID",
			Short: fmt.Sprintf("Mark a device %s (is_active = %v)", state, active),
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				pool, err := open(cmd)
				if err != nil {
					return err
				}
				defer pool.Close()
				if err := ops.SetDeviceActive(cmd.Context(), pool, args[0], active); err != nil {
					return err
				}
				_, err = fmt.Fprintf(e.stdout, "%s is now %s\n", args[0], state)
				return err
			},
		}
	}
	cmd.AddCommand(add, list, setActive("activate", true), setActive("deactivate", false))
	return cmd
}
