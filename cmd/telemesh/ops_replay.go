package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/natsx"
	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/services/publisher"
)

// newReplayCmd returns the replay command and its publish-failed, parked,
// dead-lettered and kv-rebuild subcommands.
func newReplayCmd(e env) *cobra.Command {
	var databaseURL, since, until string
	var filter ops.Filter
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "replay publish-failed|parked|dead-lettered|kv-rebuild",
		Short: "Send on what did not get through: failed publishes, parked messages, dead letters, lost device states",
		Long: `replay acts on the messages that did not get through. It first prints how many
match, then acts on them unless --dry-run is given.

  publish-failed  makes publish_failed telemetry rows due now; the publisher's
                  retry loop publishes them on its next pass.
  parked          reports parked messages per organization and whether its
                  switch is on (they resume by themselves when it is); with
                  --force, messages claimed for resumption more than 2 minutes
                  ago and not finished are parked again.
  dead-lettered   republishes each dead letter's kept payload to its original
                  subject with Nats-Msg-Id replay-<message id>, and notes the
                  replay in its error_summary.
  kv-rebuild      writes each device's latest processed state from Postgres
                  into the KV bucket of device states, making the bucket
                  again with the publisher's settings if it is missing; an
                  entry already holding a newer message is left as it is.`,
	}
	pf := cmd.PersistentFlags()
	addDatabaseURLFlag(pf, &databaseURL)
	pf.StringVar(&filter.Organization, "organization", "", "only this organization's messages (slug)")
	pf.StringVar(&filter.Device, "device", "", "only this device's messages (external id)")
	pf.StringVar(&since, "since", "", "only messages received at or after this time (RFC 3339)")
	pf.StringVar(&until, "until", "", "only messages received before this time (RFC 3339)")
	pf.BoolVar(&dryRun, "dry-run", false, "print what would be done and change nothing")

	prepare := func(cmd *cobra.Command) error {
		if err := config.ApplyEnv(cmd.Flags(), e.lookupEnv); err != nil {
			return err
		}
		for _, t := range []struct {
			flag, value string
			into        *time.Time
		}{{"since", since, &filter.Since}, {"until", until, &filter.Until}} {
			if t.value == "" {
				continue
			}
			v, err := time.Parse(time.RFC3339, t.value)
			if err != nil {
				return config.Invalid(t.flag, "%q is not an RFC 3339 time like 2026-01-02T15:04:05Z", t.value)
			}
			*t.into = v
		}
		return nil
	}
	// withPool parses the shared flags and runs act with a pool that is
	// closed when act returns.
	withPool := func(cmd *cobra.Command, act func(*pgxpool.Pool) error) error {
		if err := prepare(cmd); err != nil {
			return err
		}
		pool, err := openOpsPool(cmd, e, &databaseURL, "telemesh-replay")
		if err != nil {
			return err
		}
		defer pool.Close()
		return act(pool)
	}

	publishFailed := &cobra.Command{
		Use:   "publish-failed",
		Short: "Make publish_failed telemetry rows due now so the publisher retries them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withPool(cmd, func(pool *pgxpool.Pool) error {
				n, err := ops.CountPublishFailed(cmd.Context(), pool, filter)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%d publish_failed telemetry row(s) match\n", n)
				if dryRun || n == 0 {
					return nil
				}
				done, err := ops.ReplayPublishFailed(cmd.Context(), pool, filter)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(e.stdout, "made %d row(s) due now; the publisher's retry loop publishes them\n", done)
				return err
			})
		},
	}

	var force bool
	parked := &cobra.Command{
		Use:   "parked",
		Short: "Report parked messages per organization; --force parks again those stuck queued",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withPool(cmd, func(pool *pgxpool.Pool) error {
				groups, err := ops.Parked(cmd.Context(), pool, filter)
				if err != nil {
					return err
				}
				var parkedN, stale int64
				for _, g := range groups {
					parkedN += g.Parked
					stale += g.StaleQueued
				}
				fmt.Fprintf(e.stdout, "%d parked message(s), %d queued for resumption more than %s ago\n", parkedN, stale, ops.StaleQueued)
				for _, g := range groups {
					state := "switch off: they stay parked until it is switched on"
					if g.SwitchOn {
						state = "switch on: the gateway resumes them"
					}
					fmt.Fprintf(e.stdout, "  %s: %d parked, %d stale queued (%s)\n", g.Organization, g.Parked, g.StaleQueued, state)
				}
				if !force || dryRun || stale == 0 {
					return nil
				}
				n, err := ops.Repark(cmd.Context(), pool, filter)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(e.stdout, "parked %d stale queued message(s) again\n", n)
				return err
			})
		},
	}
	parked.Flags().BoolVar(&force, "force", false, "park again messages queued for resumption more than 2 minutes ago")

	var natsURL string
	deadLettered := &cobra.Command{
		Use:   "dead-lettered",
		Short: "Republish dead letters' kept payloads to their original subjects",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withPool(cmd, func(pool *pgxpool.Pool) error {
				dls, err := ops.DeadLetters(cmd.Context(), pool, filter)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%d dead letter(s) match\n", len(dls))
				if dryRun || len(dls) == 0 {
					return nil
				}
				nc, err := nats.Connect(natsURL, nats.Name("telemesh-replay"))
				if err != nil {
					return config.Invalid("nats-url", "%v", err)
				}
				defer nc.Close()
				js, err := jetstream.New(nc)
				if err != nil {
					return fmt.Errorf("jetstream: %w", err)
				}
				for i, d := range dls {
					if err := ops.ReplayDeadLetter(cmd.Context(), pool, js, d); err != nil {
						return fmt.Errorf("after %d of %d: %w", i, len(dls), err)
					}
					fmt.Fprintf(e.stdout, "replayed %s to %s\n", d.ID, d.Subject)
				}
				_, err = fmt.Fprintf(e.stdout, "replayed %d dead letter(s)\n", len(dls))
				return err
			})
		},
	}
	deadLettered.Flags().StringVar(&natsURL, "nats-url", "nats://127.0.0.1:4222", "NATS URL to republish to (a running telemesh up gives it)")
	config.MarkSecret(deadLettered.Flags(), "nats-url")

	var (
		kvNATS   = publisher.DefaultNATSConfig()
		kvURL    string
		kvAuth   natsx.Auth
		kvWithin time.Duration
	)
	kvRebuild := &cobra.Command{
		Use:   "kv-rebuild",
		Short: "Write each device's latest processed state from Postgres into the KV bucket of device states",
		Long: `kv-rebuild refills the KV bucket of device states from Postgres: for each
device and topic, the latest processed telemetry row (latest recorded_at),
written in the shape the publisher writes and with its compare-and-set rule:
the current entry is read and a topic replaced only by a newer message, so
a state the publisher wrote meanwhile is never overwritten by an older one.

A bucket that is missing is made again first, as the publisher makes it:
one value per device, file storage, --nats-replicas replicas. Use it after
the bucket was lost or made again empty, when devices that have not
published since are missing from it; doctor prints the command.

It first prints how many devices and topic states match; --dry-run stops
there and neither connects to NATS nor writes. --organization and --device
narrow it; --since and --until do not apply (the bucket holds the latest
state, whenever it was received). Rows that are pending or publish_failed
are the publisher's to write: replay publish-failed makes them due now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withPool(cmd, func(pool *pgxpool.Pool) error {
				if !filter.Since.IsZero() || !filter.Until.IsZero() {
					flag := "since"
					if filter.Since.IsZero() {
						flag = "until"
					}
					return config.Invalid(flag, "%v", ops.ErrTimeWindow)
				}
				switch {
				case strings.TrimSpace(kvNATS.Bucket) == "":
					return config.Invalid("kv-bucket", "must not be empty")
				case kvNATS.Replicas < 1 || kvNATS.Replicas > 5:
					return config.Invalid("nats-replicas", "%d is out of range 1..5", kvNATS.Replicas)
				case kvWithin <= 0:
					return config.Invalid("timeout", "must be positive")
				}
				n, err := ops.CountKVStates(cmd.Context(), pool, filter)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%d device(s) with %d latest processed topic state(s) match\n", n.Devices, n.Topics)
				if dryRun {
					return nil
				}
				opts, err := kvAuth.Options()
				if err != nil {
					return config.Invalid(kvAuth.Method(), "%v", err)
				}
				nc, err := nats.Connect(kvURL, append(opts, nats.Name("telemesh-replay"), nats.Timeout(kvWithin))...)
				if err != nil {
					return config.Invalid("nats-url", "%v", err)
				}
				defer nc.Close()
				js, err := jetstream.New(nc)
				if err != nil {
					return fmt.Errorf("jetstream: %w", err)
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), kvWithin)
				kv, created, err := publisher.EnsureBucket(ctx, js, kvNATS)
				cancel()
				if err != nil {
					return err
				}
				if created {
					fmt.Fprintf(e.stdout, "created KV bucket %s (file storage, %d replica(s), history 1)\n", kvNATS.Bucket, kvNATS.Replicas)
				}
				if n.Devices == 0 {
					return nil
				}
				items, err := ops.LatestProcessed(cmd.Context(), pool, filter)
				if err != nil {
					return err
				}
				done, err := ops.RebuildKV(cmd.Context(), publisher.NewStateStore(js, kv, kvNATS.AnalyticsStream, kvWithin), items)
				// What was written stays written: say so, also on a failure.
				fmt.Fprintf(e.stdout, "wrote %d device state(s); %d already held as new or newer\n", done.Written, done.Kept)
				return err
			})
		},
	}
	kf := kvRebuild.Flags()
	kf.StringVar(&kvURL, "nats-url", "nats://127.0.0.1:4222", "NATS URL of the bucket")
	kf.StringVar(&kvNATS.Bucket, "kv-bucket", kvNATS.Bucket, "KV bucket of device states")
	kf.IntVar(&kvNATS.Replicas, "nats-replicas", kvNATS.Replicas, "replicas of the bucket if it must be made again (as the publisher's --nats-replicas; 3 in production)")
	kf.DurationVar(&kvWithin, "timeout", 10*time.Second, "time allowed for each device's write")
	kf.StringVar(&kvAuth.User, "nats-user", "", "NATS user name")
	kf.StringVar(&kvAuth.Password, "nats-password", "", "NATS password")
	kf.StringVar(&kvAuth.Token, "nats-token", "", "NATS token")
	kf.StringVar(&kvAuth.NKeyFile, "nats-nkey-file", "", "NATS NKey seed file")
	kf.StringVar(&kvAuth.CredsFile, "nats-creds-file", "", "NATS credentials (JWT) file")
	config.MarkSecret(kf, "nats-url", "nats-password", "nats-token")

	cmd.AddCommand(publishFailed, parked, deadLettered, kvRebuild)
	return cmd
}
