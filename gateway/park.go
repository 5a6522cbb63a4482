package gateway

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/envelope"
)

// claimParked takes up to limit parked messages of organizations whose
// switch is on, marking them queued so no other replica takes them too. A
// message left queued by a crash is taken again after staleAfter.
const claimParked = `
update ingestion_messages m set status = 'queued', updated_at = now()
where m.id in (
	select id from ingestion_messages
	where (status = 'parked' or (status = 'queued' and updated_at < now() - $3::interval))
	  and organization_id is not null and not (organization_id = any($1::uuid[]))
	order by received_at
	limit $2
	for update skip locked)
returning m.id, m.dedupe_key, m.source_subject, coalesce(m.source_message_id, ''), coalesce(m.stream_sequence, 0),
	m.delivery_attempts, m.raw_payload, m.received_at`

// ResumeParked sends parked messages of organizations whose switch is back
// on down the chain, until ctx ends. It keeps each message's id and dedupe
// key, so the persister completes the parked row instead of adding one.
func (g *Server) ResumeParked(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if !g.catalog.Switches().Global.PipelineEnabled {
			continue
		}
		for ctx.Err() == nil {
			n, err := g.ResumeOnce(ctx, g.cfg.BatchSize)
			if err != nil {
				g.logger.Warn("resuming parked messages failed", "err", err)
				break
			}
			if n < g.cfg.BatchSize {
				break
			}
		}
	}
}

// ResumeOnce resumes one batch of parked messages and returns its size.
func (g *Server) ResumeOnce(ctx context.Context, limit int) (int, error) {
	sw := g.catalog.Switches()
	disabled := []uuid.UUID{}
	for org, s := range sw.PerOrg {
		if !s.PipelineEnabled {
			disabled = append(disabled, org)
		}
	}
	rows, err := g.pool.Query(ctx, claimParked, disabled, limit, "2 minutes")
	if err != nil {
		return 0, fmt.Errorf("claim parked: %w", err)
	}
	ins, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Incoming, error) {
		var (
			in       Incoming
			attempts int32
			seq      int64
		)
		err := r.Scan(&in.MessageID, &in.DedupeKey, &in.Subject, &in.HeaderMessageID, &seq, &attempts, &in.Payload, &in.ReceivedAt)
		in.StreamSequence, in.Delivery = uint64(seq), uint32(attempts)
		return in, err
	})
	if err != nil || len(ins) == 0 {
		return 0, err
	}
	snap := g.catalog.Snapshot()
	envs := make([]*telemetryv1.Envelope, len(ins))
	for i, in := range ins {
		envs[i] = BuildEnvelope(in, snap, sw, g.epoch)
	}
	cctx, cancel := context.WithTimeout(ctx, g.cfg.CallTimeout)
	defer cancel()
	if _, err := g.validator.Validate(cctx, &validatorv1.ValidateRequest{Envelopes: envs, WireVersion: envelope.WireVersion}); err != nil {
		// Put them back so they are visible as parked and tried again.
		ids := make([]uuid.UUID, len(ins))
		for i, in := range ins {
			ids[i] = in.MessageID
		}
		_, _ = g.pool.Exec(context.WithoutCancel(ctx), `update ingestion_messages set status = 'parked', updated_at = now()
			where id = any($1) and status = 'queued'`, ids)
		return 0, fmt.Errorf("resume %d parked messages: %w", len(ins), err)
	}
	g.metrics.resumed.Add(float64(len(ins)))
	g.logger.Info("resumed parked messages", "messages", len(ins))
	return len(ins), nil
}
