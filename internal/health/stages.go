// Package health asks the stages of a mesh for their gRPC health
// (grpc.health.v1) at every address of their targets. What the pipeline
// does beside (its stream, switches, counts and outbox) is read by package
// pipelinestate, which reports these checks with the rest.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/telemesh/telemesh/internal/pipeline"
)

// Stages lists the stages in chain order, as their targets are keyed.
var Stages = pipeline.ServiceNames()

// Serving is the health status of a stage that answers SERVING.
const Serving = "SERVING"

// StageHealth is one stage's gRPC health over every address of its target.
type StageHealth struct {
	Stage     string          `json:"stage"`
	Target    string          `json:"target"`
	Status    string          `json:"status"`
	Addresses []AddressHealth `json:"addresses"`
}

// AddressHealth is the answer of one address to grpc.health.v1 Check.
type AddressHealth struct {
	Address string `json:"address"`
	Status  string `json:"status"`
	Error   string `json:"error,omitempty"`
}

// CheckStages asks every stage's target for its gRPC health, within
// timeout per call, over creds (a tlsx.Reloader's client credentials when
// the stages require mutual TLS; nil is plaintext). Stages with no target
// are reported as UNKNOWN.
func CheckStages(ctx context.Context, targets map[string]string, timeout time.Duration, creds credentials.TransportCredentials) []StageHealth {
	out := make([]StageHealth, len(Stages))
	done := make(chan struct{}, len(Stages))
	for i, stage := range Stages {
		go func() {
			defer func() { done <- struct{}{} }()
			out[i] = checkTarget(ctx, stage, targets[stage], timeout, creds)
		}()
	}
	for range Stages {
		<-done
	}
	return out
}

// CheckTarget asks every address of a gRPC target for its health: a
// dns:///host:port target is resolved and each address checked, a
// comma-separated list checks each entry. The stage is SERVING only when
// every address is.
func CheckTarget(ctx context.Context, stage, target string, timeout time.Duration) StageHealth {
	return checkTarget(ctx, stage, target, timeout, nil)
}

// checkTarget is [CheckTarget] over creds (nil: plaintext).
func checkTarget(ctx context.Context, stage, target string, timeout time.Duration, creds credentials.TransportCredentials) StageHealth {
	h := StageHealth{Stage: stage, Target: target}
	if strings.TrimSpace(target) == "" {
		h.Status = "UNKNOWN"
		h.Addresses = []AddressHealth{{Status: "UNKNOWN", Error: "no target configured"}}
		return h
	}
	addrs, err := resolve(ctx, target, timeout)
	if err != nil {
		h.Status = "UNREACHABLE"
		h.Addresses = []AddressHealth{{Address: target, Status: "UNREACHABLE", Error: err.Error()}}
		return h
	}
	h.Status = Serving
	for _, a := range addrs {
		ah := checkAddress(ctx, a, timeout, creds)
		if ah.Status != Serving && h.Status == Serving {
			h.Status = ah.Status
		}
		h.Addresses = append(h.Addresses, ah)
	}
	return h
}

// address is one host:port to check and the host name its certificate
// is verified against.
type address struct {
	addr, host string
}

// resolve turns a target into the host:port addresses to check.
func resolve(ctx context.Context, target string, timeout time.Duration) ([]address, error) {
	var out []address
	for _, part := range strings.Split(target, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, ok := strings.CutPrefix(part, "dns:///")
		if !ok {
			host, _, err := net.SplitHostPort(part)
			if err != nil {
				host = part
			}
			out = append(out, address{addr: part, host: host})
			continue
		}
		host, port, err := net.SplitHostPort(name)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", part, err)
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		ips, err := net.DefaultResolver.LookupHost(rctx, host)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		sort.Strings(ips)
		for _, ip := range ips {
			out = append(out, address{addr: net.JoinHostPort(ip, port), host: host})
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no addresses")
	}
	return out, nil
}

// checkAddress calls grpc.health.v1 Check on one address, over creds
// (nil: plaintext).
func checkAddress(ctx context.Context, a address, timeout time.Duration, creds credentials.TransportCredentials) AddressHealth {
	ah := AddressHealth{Address: a.addr}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if creds != nil {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(creds)}
		if creds.Info().ServerName == "" {
			// A resolved address is an IP; the certificate names the host.
			opts = append(opts, grpc.WithAuthority(a.host))
		}
	}
	conn, err := grpc.NewClient("passthrough:///"+a.addr, opts...)
	if err != nil {
		ah.Status, ah.Error = "UNREACHABLE", err.Error()
		return ah
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		ah.Status, ah.Error = "UNREACHABLE", err.Error()
		return ah
	}
	ah.Status = resp.GetStatus().String()
	return ah
}
