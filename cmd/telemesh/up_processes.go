package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/demo"
	"github.com/telemesh/telemesh/internal/local"
)

// childGrace is how long a child has after SIGTERM before it is killed:
// its own shutdown grace, and a margin to flush and exit.
const childGrace = shutdownGrace + 5*time.Second

// processMesh is every stage and the viewer as child processes of up.
type processMesh struct {
	children  *local.Children
	pids      map[string]int
	grpc      map[string]string
	admin     map[string]string
	viewerURL string
}

// startProcesses starts every stage as `telemesh serve <stage>`, a child
// process of this same binary, downstream first (publisher, persister,
// deriver, validator, gateway), each once the one it calls is ready, then
// the viewer; with the addresses and settings the in-process mesh uses.
// Secrets reach the children through their environment, never their
// command line, which any user of the machine can read.
func startProcesses(ctx context.Context, e env, spec meshSpec) (*processMesh, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary to start the stages: %w", err)
	}
	m := &processMesh{
		children: &local.Children{Out: e.stderr, Grace: childGrace, ReadyTimeout: time.Minute},
		pids:     map[string]int{}, grpc: map[string]string{}, admin: map[string]string{},
	}
	environ := childEnv(map[string]string{
		config.EnvName("database-url"): spec.databaseURL,
		config.EnvName("nats-url"):     spec.natsURL,
	})
	host, _ := os.Hostname()
	for _, stage := range app.Stages {
		p := spec.ports[stage]
		m.grpc[stage] = net.JoinHostPort(spec.host, strconv.Itoa(p[0]))
		m.admin[stage] = net.JoinHostPort(spec.host, strconv.Itoa(p[1]))
	}
	for i := len(app.Stages) - 1; i >= 0; i-- {
		stage := app.Stages[i]
		args := []string{"serve", stage,
			"--listen", m.grpc[stage], "--admin-listen", m.admin[stage],
			"--log-format", "text", "--log-level", spec.logLevel,
			"--shutdown-grace", shutdownGrace.String(), "--instance", host + "/" + stage}
		if spec.pprof {
			args = append(args, "--pprof")
		}
		for _, next := range app.NextHops[stage] {
			args = append(args, "--"+next+"-addr", m.grpc[next])
		}
		switch stage {
		case app.Gateway:
			args = append(args, "--subjects", strings.Join(demo.Subjects, ","))
		case app.Publisher:
			args = append(args, "--env", "local")
		}
		ch, err := m.children.Start(ctx, local.ChildSpec{Name: stage, Path: exe, Args: args, Env: environ,
			ReadyURL: "http://" + m.admin[stage] + "/readyz"})
		if err != nil {
			return nil, m.failed(err)
		}
		m.pids[stage] = ch.PID
	}
	if spec.viewerListen == "" {
		return m, nil
	}
	listen, err := concretePort(spec.viewerListen)
	if err != nil {
		return nil, m.failed(config.Invalid("viewer-listen", "%v", err))
	}
	args := []string{"serve", "viewer", "--listen", listen, "--admin-listen", "",
		"--log-format", "text", "--log-level", spec.logLevel, "--env", "local"}
	for _, stage := range app.Stages {
		args = append(args, "--"+stage+"-addr", m.grpc[stage])
	}
	venv := environ
	if spec.viewer.Token != "" {
		venv = append(append([]string{}, environ...), config.EnvName("viewer-token")+"="+spec.viewer.Token)
	}
	ch, err := m.children.Start(ctx, local.ChildSpec{Name: "viewer", Path: exe, Args: args, Env: venv,
		ReadyURL: "http://" + listen + "/readyz"})
	if err != nil {
		return nil, m.failed(err)
	}
	m.pids["viewer"], m.viewerURL = ch.PID, "http://"+listen+"/"
	return m, nil
}

// failed stops the children started so far and returns err with what
// became of them.
func (m *processMesh) failed(err error) error {
	if serr := m.children.Stop(); serr != nil {
		return fmt.Errorf("%w (and stopping the others: %v)", err, serr)
	}
	return err
}

func (m *processMesh) describe(info *local.MeshInfo) {
	for _, s := range app.Stages {
		info.Stages[s] = local.MeshProcess{GRPC: m.grpc[s], Admin: m.admin[s], PID: m.pids[s]}
	}
	if m.viewerURL != "" {
		info.Viewer = &local.MeshViewer{URL: m.viewerURL, PID: m.pids["viewer"]}
	}
}

func (m *processMesh) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-m.children.Exited():
		return err
	}
}

func (m *processMesh) stop() error { return m.children.Stop() }

// childEnv returns this process's environment for a child, without any
// TELEMESH_* variable, so the child runs with exactly the settings up
// gives it, plus set.
func childEnv(set map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix) {
			out = append(out, kv)
		}
	}
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	return out
}

// concretePort returns addr with port 0 replaced by a port free now, so a
// child told to listen there can be found at it.
func concretePort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port != "0" {
		return addr, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	defer ln.Close()
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return net.JoinHostPort(host, port), nil
}
