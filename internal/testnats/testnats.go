// Package testnats runs an in-process NATS server with JetStream for tests,
// on a free loopback port with its storage in the test's temporary directory.
package testnats

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readyTimeout bounds the wait for a (re)started server to accept clients:
// generous, since on a busy machine a start can take seconds and a server
// that is ready never waits it out.
const readyTimeout = 2 * time.Minute

// Server is an in-process NATS server with JetStream enabled. It is shut
// down when the test that created it ends.
type Server struct {
	// Server is the running server. Restart replaces it, so read it again
	// after a restart.
	Server *server.Server

	opts *server.Options
	url  string
}

// New starts a server on 127.0.0.1 at a random port, storing JetStream data
// in t.TempDir(), and waits until it accepts connections.
func New(t testing.TB) *Server {
	t.Helper()
	return NewWith(t, nil)
}

// NewWith is [New] with the server's options adjusted by configure before
// it starts, e.g. to require authentication.
func NewWith(t testing.TB, configure func(*server.Options)) *Server {
	t.Helper()
	s := &Server{opts: &server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		// Signals belong to the test binary, and the server's log would
		// drown the test output.
		NoSigs: true,
		NoLog:  true,
		// Room for the large payloads some tests send (the default is 1 MiB).
		MaxPayload: 8 << 20,
	}}
	if configure != nil {
		configure(s.opts)
	}
	s.start(t)
	// A restart keeps the address, so clients reconnect to the same URL.
	s.opts.Port = s.Server.Addr().(*net.TCPAddr).Port
	s.url = s.Server.ClientURL()
	t.Cleanup(s.shutdown)
	return s
}

// URL is the client URL, such as nats://127.0.0.1:41234. It does not change
// across restarts.
func (s *Server) URL() string { return s.url }

// Connect returns a JetStream client on a connection to the server that is
// closed when the test ends.
func (s *Server) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(s.url)
	if err != nil {
		t.Fatalf("connect to NATS at %s: %v", s.url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// Restart shuts the server down and starts a new one on the same port with
// the same JetStream store, as a NATS restart in production would: streams,
// consumers and stored messages survive, clients see a disconnect and
// reconnect.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.shutdown()
	s.start(t)
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	// NewServer keeps and may adjust the options it is given; hand it a copy
	// so a restart starts from the same settings.
	opts := s.opts.Clone()
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("testnats: configure server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		t.Fatalf("testnats: server on %s:%d not ready within %s", s.opts.Host, s.opts.Port, readyTimeout)
	}
	s.Server = srv
}

func (s *Server) shutdown() {
	if s.Server == nil {
		return
	}
	s.Server.Shutdown()
	s.Server.WaitForShutdown()
	s.Server = nil
}
