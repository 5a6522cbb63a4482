package main

import (
	"fmt"
	"os/user"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/pipeline"
)

// newFlagsCmd returns the flags command, which shows and sets the pipeline
// switches.
func newFlagsCmd(e env) *cobra.Command {
	var databaseURL, organization string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "flags get|set",
		Short: "Show or change the pipeline switches, globally or for one organization",
		Long: `flags shows and changes the pipeline switches: pipeline.enabled,
publish_analytics and publish_invalid_events. The global row applies to every
organization; an organization's row narrows it, so a switch is in effect for
an organization when it is on both globally and for the organization.`,
	}
	pf := cmd.PersistentFlags()
	addDatabaseURLFlag(pf, &databaseURL)
	pf.StringVar(&organization, "organization", "", "the organization (slug); without it, the global switches")

	get := &cobra.Command{
		Use:   "get",
		Short: "Print the global switches and every organization's (or --organization's), with the values in effect",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := openOpsPool(cmd, e, &databaseURL, "telemesh-flags")
			if err != nil {
				return err
			}
			defer pool.Close()
			rows, err := ops.GetSwitches(cmd.Context(), pool, organization)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, rows)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SCOPE\tPIPELINE.ENABLED\tPUBLISH_ANALYTICS\tPUBLISH_INVALID_EVENTS\tUPDATED\tBY")
			for _, r := range rows {
				scope := "global"
				if r.OrganizationID != nil {
					scope = r.Organization
				}
				updated, by := "-", "-"
				if r.UpdatedAt != nil {
					updated = r.UpdatedAt.UTC().Format("2006-01-02 15:04:05Z")
				}
				if r.UpdatedBy != "" {
					by = r.UpdatedBy
				}
				if !r.Exists {
					by = "(no row: all on)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", scope,
					switchCell(r.Switches.PipelineEnabled, r.Effective.PipelineEnabled),
					switchCell(r.Switches.PublishAnalytics, r.Effective.PublishAnalytics),
					switchCell(r.Switches.PublishInvalidEvents, r.Effective.PublishInvalidEvents), updated, by)
			}
			return tw.Flush()
		},
	}
	get.Flags().BoolVar(&asJSON, "json", false, "print the switches as JSON")

	var names []string
	for _, sw := range pipeline.Switches() {
		names = append(names, string(sw))
	}
	set := &cobra.Command{
		Use:   "set " + strings.Join(names, "|") + " on|off",
		Short: "Turn one switch on or off, globally or for --organization",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, ok := pipeline.ParseSwitch(args[0]); !ok {
				return fmt.Errorf("%w: unknown switch %q; one of %s", errUsage, args[0], strings.Join(names, ", "))
			}
			var on bool
			switch args[1] {
			case "on":
				on = true
			case "off":
			default:
				return fmt.Errorf("%w: %q is neither on nor off", errUsage, args[1])
			}
			pool, err := openOpsPool(cmd, e, &databaseURL, "telemesh-flags")
			if err != nil {
				return err
			}
			defer pool.Close()
			if err := ops.SetSwitch(cmd.Context(), pool, organization, args[0], on, osUser(e)); err != nil {
				return err
			}
			scope := "globally"
			if organization != "" {
				scope = "for " + organization
			}
			_, err = fmt.Fprintf(e.stdout, "%s is %s %s\n", args[0], args[1], scope)
			return err
		},
	}
	cmd.AddCommand(get, set)
	return cmd
}

// switchCell shows a switch's own value and, when it differs, the value in
// effect.
func switchCell(own, effective bool) string {
	s := map[bool]string{true: "on", false: "off"}
	if own == effective {
		return s[own]
	}
	return s[own] + " (in effect: " + s[effective] + ")"
}

// osUser names who runs the command, for updated_by.
func osUser(e env) string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	for _, k := range []string{"USER", "LOGNAME"} {
		if v, ok := e.lookupEnv(k); ok && v != "" {
			return v
		}
	}
	return "telemesh-cli"
}
