// Package local provides what `telemesh up` needs on one machine: an
// embedded NATS server with JetStream and a Postgres to use.
package local

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATS is an embedded NATS server with JetStream.
type NATS struct {
	srv *server.Server
}

// StartNATS starts NATS with JetStream storing under dir, on a free
// loopback port so it never clashes with a NATS already running.
func StartNATS(dir string) (*NATS, error) {
	srv, err := server.NewServer(&server.Options{
		ServerName: "telemesh-local",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   filepath.Join(dir, "jetstream"),
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded nats did not start within 10s")
	}
	return &NATS{srv: srv}, nil
}

// URL is the client URL of the server.
func (n *NATS) URL() string { return n.srv.ClientURL() }

// Shutdown stops the server and waits for it.
func (n *NATS) Shutdown() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}
