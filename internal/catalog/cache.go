package catalog

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/pipeline"
)

// The channels the migrations notify on when definitions or switches change.
const (
	ChannelDefinitions = "telemesh_definitions"
	ChannelSwitches    = "telemesh_switches"
)

// Switches are the pipeline switches: a global row and one per organization
// that has its own.
type Switches struct {
	Global PipelineSwitch
	PerOrg map[uuid.UUID]PipelineSwitch
}

// PipelineSwitch is one row of pipeline_switches.
type PipelineSwitch struct {
	PipelineEnabled      bool
	PublishAnalytics     bool
	PublishInvalidEvents bool
}

// On reports whether the switch of that name is on in the row.
func (p PipelineSwitch) On(s pipeline.Switch) bool {
	switch s {
	case pipeline.SwitchPipeline:
		return p.PipelineEnabled
	case pipeline.SwitchPublishAnalytics:
		return p.PublishAnalytics
	case pipeline.SwitchPublishInvalidEvents:
		return p.PublishInvalidEvents
	}
	return false
}

// For returns the switches in force for an organization: both the global
// and its own switch must be on.
func (s *Switches) For(org uuid.UUID) PipelineSwitch {
	out := s.Global
	if o, ok := s.PerOrg[org]; ok {
		out.PipelineEnabled = out.PipelineEnabled && o.PipelineEnabled
		out.PublishAnalytics = out.PublishAnalytics && o.PublishAnalytics
		out.PublishInvalidEvents = out.PublishInvalidEvents && o.PublishInvalidEvents
	}
	return out
}

// OrgEnabled reports whether the organization's own switch lets its messages
// through (the global switch pauses consumption instead).
func (s *Switches) OrgEnabled(org uuid.UUID) bool {
	o, ok := s.PerOrg[org]
	return !ok || o.PipelineEnabled
}

// LoadSwitches reads pipeline_switches.
func LoadSwitches(ctx context.Context, q Querier) (*Switches, error) {
	s := &Switches{Global: PipelineSwitch{true, true, true}, PerOrg: map[uuid.UUID]PipelineSwitch{}}
	err := each(ctx, q, `select organization_id, pipeline_enabled, publish_analytics, publish_invalid_events from pipeline_switches`, func(r pgx.Rows) error {
		var (
			org *uuid.UUID
			p   PipelineSwitch
		)
		if err := r.Scan(&org, &p.PipelineEnabled, &p.PublishAnalytics, &p.PublishInvalidEvents); err != nil {
			return err
		}
		if org == nil {
			s.Global = p
		} else {
			s.PerOrg[*org] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load pipeline switches: %w", err)
	}
	return s, nil
}

// Cache keeps the current [Snapshot] and [Switches], reloading them when
// Postgres notifies a change and at least every refresh interval, so every
// replica sees a change within a second.
type Cache struct {
	pool    *pgxpool.Pool
	logger  *slog.Logger
	refresh time.Duration

	snap     atomic.Pointer[Snapshot]
	switches atomic.Pointer[Switches]
}

// NewCache returns a cache over pool. Call [Cache.Load] before serving and
// run [Cache.Run] in the background.
func NewCache(pool *pgxpool.Pool, logger *slog.Logger, refresh time.Duration) *Cache {
	if refresh <= 0 {
		refresh = 30 * time.Second
	}
	return &Cache{pool: pool, logger: logger, refresh: refresh}
}

// Load reads the catalog and the switches now.
func (c *Cache) Load(ctx context.Context) error {
	if err := c.loadSnapshot(ctx); err != nil {
		return err
	}
	return c.loadSwitches(ctx)
}

func (c *Cache) loadSnapshot(ctx context.Context) error {
	s, err := Load(ctx, c.pool)
	if err != nil {
		return err
	}
	c.snap.Store(s)
	return nil
}

func (c *Cache) loadSwitches(ctx context.Context) error {
	s, err := LoadSwitches(ctx, c.pool)
	if err != nil {
		return err
	}
	c.switches.Store(s)
	return nil
}

// Snapshot returns the current catalog, or nil before the first load.
func (c *Cache) Snapshot() *Snapshot { return c.snap.Load() }

// Switches returns the current switches; before the first load, everything
// is on.
func (c *Cache) Switches() *Switches {
	if s := c.switches.Load(); s != nil {
		return s
	}
	return &Switches{Global: PipelineSwitch{true, true, true}, PerOrg: map[uuid.UUID]PipelineSwitch{}}
}

// Run listens for changes until ctx ends. A lost connection is retried; in
// the meantime the switches are polled every second and the catalog every
// refresh interval.
func (c *Cache) Run(ctx context.Context) error {
	notified := make(chan string, 16)
	go c.listen(ctx, notified)
	switchTick := time.NewTicker(time.Second)
	defer switchTick.Stop()
	catalogTick := time.NewTicker(c.refresh)
	defer catalogTick.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			return nil
		case ch := <-notified:
			if ch == ChannelSwitches {
				err = c.loadSwitches(ctx)
			} else {
				err = c.loadSnapshot(ctx)
			}
		case <-switchTick.C:
			err = c.loadSwitches(ctx)
		case <-catalogTick.C:
			err = c.loadSnapshot(ctx)
		}
		if err != nil && ctx.Err() == nil {
			c.logger.Warn("catalog refresh failed; keeping the last one", "err", err)
		}
	}
}

func (c *Cache) listen(ctx context.Context, notified chan<- string) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.listenOnce(ctx, notified)
		if ctx.Err() != nil {
			return
		}
		c.logger.Warn("catalog listener lost its connection; retrying", "err", err, "in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (c *Cache) listenOnce(ctx context.Context, notified chan<- string) error {
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	for _, ch := range []string{ChannelDefinitions, ChannelSwitches} {
		if _, err := conn.Exec(ctx, "listen "+ch); err != nil {
			return err
		}
	}
	// Reload once listening, so a change made while reconnecting is seen.
	notified <- ChannelDefinitions
	notified <- ChannelSwitches
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "unlisten *") }()
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			return err
		}
		select {
		case notified <- n.Channel:
		default: // a reload is already queued
		}
	}
}
