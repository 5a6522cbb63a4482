// Package process runs one stage process: its gRPC server, its admin HTTP
// port and its background workers, and stops them gracefully when the
// context ends.
package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/telemesh/telemesh/internal/admin"
	"github.com/telemesh/telemesh/internal/grpcx"
)

// Worker is a background loop, such as a NATS consumer or a retry loop. It
// runs until ctx ends, finishes the work it has started, and returns nil; an
// error it returns stops the process.
type Worker struct {
	Name string
	Run  func(ctx context.Context) error
}

// Process is one running stage.
type Process struct {
	// Name is the stage name, used in logs.
	Name   string
	Logger *slog.Logger
	// GRPC is the server with the stage's service registered on it.
	GRPC *grpcx.Server
	// Listener is where GRPC serves.
	Listener net.Listener
	// Health, if set, serves the health service alone on HealthListener,
	// in plaintext, for probes that cannot present the client certificate
	// GRPC requires. It stops after GRPC.
	Health         *grpc.Server
	HealthListener net.Listener
	// Admin is the admin HTTP server.
	Admin *admin.Server
	// Workers run beside the server.
	Workers []Worker
	// ShutdownGrace bounds the graceful stop: workers finishing their
	// batches, then calls in flight. Past it, calls are cancelled.
	ShutdownGrace time.Duration
	// OnServing, if set, is called once the process is serving.
	OnServing func()
	// Ready, if set, says whether the stage can do its work now (its
	// catalog loaded, Postgres and NATS reachable where it needs them). The
	// health service says SERVING only while it passes, so balancers with
	// client-side health checking send calls only to replicas that can
	// take them. Nil is always ready.
	Ready func(ctx context.Context) error
	// ReadyEvery is how often Ready is asked; 0 is every second.
	ReadyEvery time.Duration
}

// Run serves until ctx ends or a part fails, then stops in this order:
// health turns NOT_SERVING so balancers stop sending; workers stop taking new
// work and finish what they started; the gRPC server drains calls in flight;
// the admin port closes. It returns nil after a stop asked for
// through ctx.
func (p *Process) Run(ctx context.Context) error {
	errc := make(chan error, 3+len(p.Workers))
	go func() {
		if err := p.GRPC.Serve(p.Listener); err != nil && !errors.Is(err, net.ErrClosed) {
			errc <- fmt.Errorf("grpc serve: %w", err)
		}
	}()
	go func() {
		if err := p.Admin.Serve(); err != nil {
			errc <- err
		}
	}()
	if p.Health != nil {
		go func() {
			if err := p.Health.Serve(p.HealthListener); err != nil && !errors.Is(err, net.ErrClosed) {
				errc <- fmt.Errorf("health serve: %w", err)
			}
		}()
	}

	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	var wg sync.WaitGroup
	for _, w := range p.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.Run(workCtx); err != nil && !errors.Is(err, context.Canceled) {
				errc <- fmt.Errorf("%s: %w", w.Name, err)
			}
		}()
	}

	p.GRPC.Ready()
	readyCtx, stopReady := context.WithCancel(context.WithoutCancel(ctx))
	readyDone := make(chan struct{})
	p.followReadiness(readyCtx, readyDone)
	addrs := []any{"stage", p.Name, "grpc", p.Listener.Addr().String(), "admin", p.Admin.Addr()}
	if p.Health != nil {
		addrs = append(addrs, "health", p.HealthListener.Addr().String())
	}
	p.Logger.Info("serving", addrs...)
	if p.OnServing != nil {
		p.OnServing()
	}

	var runErr error
	select {
	case <-ctx.Done():
		p.Logger.Info("shutting down", "stage", p.Name, "grace", p.ShutdownGrace.String())
	case runErr = <-errc:
		p.Logger.Error("stopping after failure", "stage", p.Name, "err", runErr)
	}

	deadline := time.Now().Add(p.ShutdownGrace)
	// Draining: NOT_SERVING from now on, and nothing may set it back.
	stopReady()
	<-readyDone
	p.GRPC.SetServing(false)
	stopWork()
	workersDone := make(chan struct{})
	go func() { wg.Wait(); close(workersDone) }()
	select {
	case <-workersDone:
	case <-time.After(time.Until(deadline)):
		p.Logger.Warn("workers did not finish within the grace period; unfinished work is left unacknowledged and will be redelivered", "stage", p.Name)
	}
	p.GRPC.Stop(max(time.Until(deadline), 0))
	if p.Health != nil {
		// Not GracefulStop: a Watch stream would hold it forever.
		p.Health.Stop()
	}

	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(time.Until(deadline), time.Second))
	defer cancel()
	if err := p.Admin.Shutdown(closeCtx); err != nil {
		p.Logger.Warn("admin shutdown", "err", err)
	}
	p.Logger.Info("stopped", "stage", p.Name)
	return runErr
}

// followReadiness sets the health status from Ready: once now, so a stage
// that is ready serves at once, then every ReadyEvery until ctx ends, when
// it closes done. A change is logged with its reason.
func (p *Process) followReadiness(ctx context.Context, done chan<- struct{}) {
	if p.Ready == nil {
		p.GRPC.SetServing(true)
		close(done)
		return
	}
	every := p.ReadyEvery
	if every <= 0 {
		every = time.Second
	}
	serving := false
	check := func() {
		cctx, cancel := context.WithTimeout(ctx, max(every, 2*time.Second))
		err := p.Ready(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil && !serving:
			p.Logger.Info("ready: health SERVING", "stage", p.Name)
		case err != nil && serving:
			p.Logger.Warn("not ready: health NOT_SERVING until it is", "stage", p.Name, "reason", err.Error())
		case err != nil:
			p.Logger.Debug("not ready yet", "stage", p.Name, "reason", err.Error())
		}
		if (err == nil) != serving {
			serving = err == nil
			p.GRPC.SetServing(serving)
		}
	}
	check()
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				check()
			}
		}
	}()
}
