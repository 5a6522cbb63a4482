package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/buildinfo"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/tracing"
)

var stageShort = map[string]string{
	app.Gateway:   "Consume telemetry from NATS JetStream and send it down the chain",
	app.Validator: "Validate payloads and forward them to the deriver",
	app.Deriver:   "Apply mutations and derived parameters",
	app.Persister: "Write telemetry rows to Postgres, then call the publisher",
	app.Publisher: "Publish device state to NATS KV and analytics subjects",
}

func newServeCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve <stage>",
		Short: "Serve one stage of the pipeline (gateway, validator, deriver, persister or publisher), or the viewer",
	}
	for _, stage := range app.Stages {
		cmd.AddCommand(newStageCmd(e, stage))
	}
	cmd.AddCommand(newViewerCmd(e))
	return cmd
}

func newStageCmd(e env, stage string) *cobra.Command {
	o := app.DefaultOptions(stage)
	o.Build = buildinfo.Read(version, commit, date)
	o.Process.Instance, _ = os.Hostname()
	cmd := &cobra.Command{
		Use:   stage,
		Short: stageShort[stage],
		Args:  cobra.NoArgs,
	}
	fs := cmd.Flags()
	o.RegisterFlags(fs)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := config.ApplyEnv(fs, e.lookupEnv); err != nil {
			return err
		}
		if err := o.Validate(); err != nil {
			return err
		}
		traces, err := tracing.ConfigFromEnv(e.lookupEnv)
		if err != nil {
			return fmt.Errorf("%w: %w", config.ErrInvalid, err)
		}
		o.Process.Tracing = traces
		logger, err := logging.New(e.stderr, o.Process.LogFormat, o.Process.LogLevel)
		if err != nil {
			return config.Invalid("log-format", "%v", err)
		}
		logger = logger.With("stage", stage)
		config.Print(logger, "configuration", fs)
		return app.Serve(cmd.Context(), o, logger)
	}
	return cmd
}
