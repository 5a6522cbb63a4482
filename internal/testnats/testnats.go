// Package testnats runs an in-process NATS server with JetStream for tests.
package testnats

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Server is an in-process NATS server on a free loopback port, storing
// JetStream data in the test's temporary directory.
type Server struct {
	*server.Server
	opts *server.Options
}

// New starts a server that shuts down when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	opts := &server.Options{
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
	}
	s := &Server{opts: opts}
	s.start(t)
	t.Cleanup(s.shutdown)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	srv, err := server.NewServer(s.opts)
	if err != nil {
		t.Fatalf("testnats: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatalf("testnats: server not ready within 10s")
	}
	s.Server = srv
	// Keep the port across restarts.
	s.opts.Port = srv.Addr().(*net.TCPAddr).Port
}

// URL is the client URL.
func (s *Server) URL() string { return s.ClientURL() }

// Restart stops the server and starts it again on the same port with the
// same store, as a NATS restart in production would.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.shutdown()
	s.start(t)
}

func (s *Server) shutdown() {
	if s.Server != nil {
		s.Server.Shutdown()
		s.Server.WaitForShutdown()
	}
}
