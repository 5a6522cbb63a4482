package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"
)

// MeshOptions configure a whole mesh in one process.
type MeshOptions struct {
	DatabaseURL string
	NATSURL     string
	// Host is the loopback address every stage listens on; ports are picked
	// free unless Ports names them.
	Host string
	// Ports optionally fixes each stage's gRPC and admin ports.
	Ports map[string][2]int
	// Tune, if set, adjusts each stage's options before it starts.
	Tune func(*Options)
}

// Mesh is every stage running in one process, each on its own gRPC server.
type Mesh struct {
	// GRPC and Admin are each stage's addresses.
	GRPC  map[string]string
	Admin map[string]string

	mu      sync.Mutex
	running map[string]*runningStage
	logger  *slog.Logger
	stopped bool
}

// runningStage is one stage of a mesh and how to stop it.
type runningStage struct {
	opts Options
	stop func() error
}

// StartMesh starts every stage, downstream first (publisher, persister,
// deriver, validator, gateway) so each stage's next hop is serving before
// it starts sending. It returns once all serve.
func StartMesh(ctx context.Context, mo MeshOptions, logger *slog.Logger) (*Mesh, error) {
	if mo.Host == "" {
		mo.Host = "127.0.0.1"
	}
	m := &Mesh{GRPC: map[string]string{}, Admin: map[string]string{}, running: map[string]*runningStage{}, logger: logger}
	host, _ := os.Hostname()
	for i := len(Stages) - 1; i >= 0; i-- {
		stage := Stages[i]
		o := DefaultOptions(stage)
		ports := mo.Ports[stage]
		o.Process.Listen = fmt.Sprintf("%s:%d", mo.Host, ports[0])
		o.Process.AdminListen = fmt.Sprintf("%s:%d", mo.Host, ports[1])
		o.Process.DatabaseURL = mo.DatabaseURL
		o.Process.LogFormat = "json"
		o.Process.Instance = host + "/" + stage
		// A Tune that picks the sampled mode keeps every message's rows.
		o.Process.StageLogSampleRate = 1
		o.NATS.URL = mo.NATSURL
		for _, next := range NextHops[stage] {
			o.Hops[next] = m.GRPC[next]
		}
		if mo.Tune != nil {
			mo.Tune(&o)
		}
		if err := m.start(ctx, stage, o); err != nil {
			_ = m.Stop()
			return nil, err
		}
	}
	if err := m.waitReady(ctx, Stages...); err != nil {
		_ = m.Stop()
		return nil, err
	}
	return m, nil
}

// readyTimeout bounds StartMesh's wait for every stage to be ready.
const readyTimeout = 60 * time.Second

// waitReady waits until each stage's /readyz answers 200, which includes
// its health saying SERVING. A stage listens before its catalog has loaded
// and says NOT_SERVING until then; a caller of StartMesh or StartStage may
// send at once, and `telemesh status` finds every stage SERVING.
func (m *Mesh) waitReady(ctx context.Context, stages ...string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for _, stage := range stages {
		url := "http://" + m.Admin[stage] + "/readyz"
		for {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return fmt.Errorf("%s readiness: %w", stage, err)
			}
			resp, err := client.Do(req)
			if err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s not ready within %s: %w", stage, readyTimeout, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// start runs one stage and waits until it serves.
func (m *Mesh) start(ctx context.Context, stage string, o Options) error {
	serving := make(chan [2]string, 1)
	o.OnServing = func(g, a string) { serving <- [2]string{g, a} }
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- Serve(sctx, o, m.logger.With("stage", stage)) }()
	select {
	case addrs := <-serving:
		m.GRPC[stage], m.Admin[stage] = addrs[0], addrs[1]
	case err := <-done:
		cancel()
		return fmt.Errorf("start %s: %w", stage, err)
	case <-ctx.Done():
		cancel()
		<-done
		return ctx.Err()
	}
	var once sync.Once
	var stopErr error
	m.running[stage] = &runningStage{opts: o, stop: func() error {
		once.Do(func() {
			cancel()
			stopErr = <-done
		})
		return stopErr
	}}
	return nil
}

// Restart stops one stage gracefully and starts it again on the same
// addresses, as a redeployed process would.
func (m *Mesh) Restart(ctx context.Context, stage string) error {
	if err := m.StopStage(stage); err != nil {
		return err
	}
	return m.StartStage(ctx, stage)
}

// StopStage stops one stage gracefully and leaves it down, as an outage of
// its process would; StartStage brings it back.
func (m *Mesh) StopStage(stage string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.running[stage]
	if r == nil {
		return fmt.Errorf("no stage %q", stage)
	}
	if err := r.stop(); err != nil {
		return fmt.Errorf("stop %s: %w", stage, err)
	}
	return nil
}

// StartStage starts a stage that StopStage stopped, on the addresses it had.
func (m *Mesh) StartStage(ctx context.Context, stage string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.running[stage]
	if r == nil {
		return fmt.Errorf("no stage %q", stage)
	}
	o := r.opts
	o.Process.Listen, o.Process.AdminListen = m.GRPC[stage], m.Admin[stage]
	if err := m.start(ctx, stage, o); err != nil {
		return err
	}
	return m.waitReady(ctx, stage)
}

// Stop stops every stage in the reverse of the start order, gateway first,
// so no stage is stopped while one before it still sends to it.
func (m *Mesh) Stop() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil
	}
	m.stopped = true
	var errs []error
	for _, stage := range Stages {
		if r := m.running[stage]; r != nil {
			errs = append(errs, r.stop())
		}
	}
	return errors.Join(errs...)
}
