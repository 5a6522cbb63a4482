package bench_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsServer is a nats-server process with JetStream storing in files in
// a temporary directory, as production stores, on a free loopback port.
type natsServer struct {
	url string
	p   *proc
}

// startNATS starts nats-server and waits until it is ready. It is stopped
// when the test ends.
func startNATS(tb testing.TB) *natsServer {
	tb.Helper()
	bin := binaries.binary(tb, "nats-server")
	store := tb.TempDir()
	p := startProc(tb, "nats-server", bin, nil,
		"-a", "127.0.0.1", "-p", "-1", "-js", "-sd", store, "-n", "telemesh-bench")
	const listening = "Listening for client connections on "
	line, ok := p.waitLine(func(l string) bool { return strings.Contains(l, listening) }, 60*time.Second)
	if !ok {
		tb.Fatalf("nats-server did not listen within 60s:\n%s", p.output())
	}
	addr := strings.TrimSpace(line[strings.Index(line, listening)+len(listening):])
	if _, ok := p.waitLine(func(l string) bool { return strings.Contains(l, "Server is ready") }, 60*time.Second); !ok {
		tb.Fatalf("nats-server not ready within 60s:\n%s", p.output())
	}
	n := &natsServer{url: "nats://" + addr, p: p}
	tb.Cleanup(func() { p.terminate(30 * time.Second) })
	return n
}

// connect returns a JetStream client whose asynchronous publishes may have
// maxPending outstanding; it is closed when the test ends.
func (n *natsServer) connect(tb testing.TB, maxPending int) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := nats.Connect(n.url, nats.Name("telemesh-bench"))
	if err != nil {
		tb.Fatalf("connect to nats-server at %s: %v", n.url, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending), jetstream.WithPublishAsyncTimeout(time.Minute))
	if err != nil {
		tb.Fatal(err)
	}
	return nc, js
}
