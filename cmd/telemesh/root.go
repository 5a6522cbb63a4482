package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/buildinfo"
)

// errUsage marks a command line that cobra could not parse; it exits 2 like a
// bad setting.
var errUsage = errors.New("usage")

// env is what a command may touch of the process: its output streams and
// its environment.
type env struct {
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)
}

func newRootCmd(e env) *cobra.Command {
	root := &cobra.Command{
		Use:   "telemesh",
		Short: "telemesh ingests device telemetry from NATS into Postgres through a chain of gRPC stages",
		Long: `telemesh ingests device telemetry from NATS JetStream into Postgres through a
chain of gRPC stage services: gateway -> validator -> deriver -> persister ->
publisher. Every stage records what it did to every message in
ingestion_stage_logs.

Every flag can also be set through the environment: --database-url is
TELEMESH_DATABASE_URL, --shutdown-grace is TELEMESH_SHUTDOWN_GRACE, and so on.
A flag on the command line wins over the environment.

Give secrets (database URLs, passwords, tokens) in the environment or in a
file: every secret flag has a --<name>-file companion (--database-url-file,
TELEMESH_DATABASE_URL_FILE) that reads it from a file. A command line is
visible to every user of the machine, so a secret flag is the last resort.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// --version prints what `telemesh version` prints.
	root.Version = buildinfo.Read(version, commit, date).String()
	root.SetVersionTemplate("{{.Version}}")
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return fmt.Errorf("%w: %v", errUsage, err)
	})
	root.AddCommand(
		newServeCmd(e),
		newUpCmd(e),
		newMigrateCmd(e),
		newVersionCmd(e),
		newSimulateCmd(e),
		newSchemaCmd(e),
		newDevicesCmd(e),
		newTraceCmd(e),
		newReplayCmd(e),
		newFlagsCmd(e),
		newRetentionCmd(e),
		newStatusCmd(e),
		newDoctorCmd(e),
		newRolesCmd(e),
	)
	return root
}

func newVersionCmd(e env) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the telemesh version, the commit it was built from and that commit's date",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprint(e.stdout, buildinfo.Read(version, commit, date).String())
			return err
		},
	}
}
