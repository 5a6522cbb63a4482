package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/schema"
	"github.com/telemesh/telemesh/services/deriver"
	"github.com/telemesh/telemesh/services/validator"
)

// definitionChecks are the checks of the stages that run the definitions.
func definitionChecks() schema.Checks {
	return schema.Checks{Parameter: validator.ValidateDefinition, Topic: deriver.CheckDefinitions}
}

func newSchemaCmd(e env) *cobra.Command {
	var databaseURL string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "schema",
		Short: "Manage device types, topics, parameters and derived parameters",
	}
	apply := &cobra.Command{
		Use:   "apply FILE",
		Short: "Create or update the definitions in a YAML or JSON file, refusing cycles and unknown names",
		Long: `apply reads a file such as

  organization: acme
  device_types:
    - name: thermostat
      base_topic: devices
      topics:
        - suffix: telemetry
          parameters:
            - {key: temp_c, json_path: $.temp_c, type: decimal, required: true, critical: true,
               rules: {min: -50, max: 150}, mutation: {"+": [{var: val}, 2]}}
          derived:
            - {key: temp_f, type: decimal, expression: {"+": [{"*": [{var: temp_c}, 1.8]}, 32]}}

Expressions are JSON-Logic. A mutation reads only "val", the extracted value
of its own parameter (as in {var: val}, or {var: val.a} into a json value); it
does not read the message's other parameters: combine values in a derived
parameter. A derived expression reads the topic's parameters, after their
mutations, and its other derived parameters.

Each topic's parameters and derived parameters are checked as a set: a derived
value that closes a cycle is refused naming the cycle; a mutation or a derived
expression that reads a name the topic does not define is refused naming the
parameter, the expression and the name, such as

  thermostat/telemetry: parameter "temp_c": mutation {"*":[{"var":"value"},1.02]}
  reads "value", which is not defined (a mutation reads only "val", the extracted value)

Nothing is written unless all of it is good; --dry-run checks the same way.

At run time a mutation that still fails on a value (a division by zero, a
result of the wrong type) does not pass the extracted value on: the value is
left out of the mutated and transformed values and listed in unresolved_values
with reason evaluation_error, derived values reading it are unresolved with a
missing input, the mutate stage is logged failed and the message's reason
names the failure. A derived expression that fails is unresolved with reason
evaluation_error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := config.ApplyEnv(cmd.Flags(), e.lookupEnv); err != nil {
				return err
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			f, err := schema.Parse(b)
			if err != nil {
				return err
			}
			if err := checkSchemaNames(f); err != nil {
				return err
			}
			if dryRun {
				if err := schema.Check(f, definitionChecks()); err != nil {
					return err
				}
				_, err := fmt.Fprintln(e.stdout, "the definitions are valid; nothing written (--dry-run)")
				return err
			}
			if _, err := fromMesh(cmd.Flags(), e, "database-url"); err != nil {
				return err
			}
			if databaseURL == "" {
				return requiredDatabaseURL()
			}
			pool, err := pg.Open(cmd.Context(), databaseURL, pg.Options{ApplicationName: "telemesh-schema"})
			if err != nil {
				return config.Invalid("database-url", "%v", err)
			}
			defer pool.Close()
			s, err := schema.Apply(cmd.Context(), pool, f, definitionChecks())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(e.stdout, "applied %d device type(s), %d topic(s), %d parameter(s), %d derived parameter(s) for %s\n",
				s.DeviceTypes, s.Topics, s.Parameters, s.Derived, f.Organization)
			return err
		},
	}
	apply.Flags().StringVar(&databaseURL, "database-url", "", "Postgres URL (required unless --dry-run, or a running telemesh up gives it)")
	apply.Flags().BoolVar(&dryRun, "dry-run", false, "check the file only")
	config.MarkSecret(apply.Flags(), "database-url")
	addMeshFileFlag(apply.Flags())
	cmd.AddCommand(apply)
	return cmd
}
