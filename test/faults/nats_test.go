package faults_test

import (
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testutil"
)

// natsServer is a nats-server process with JetStream, on a loopback port it
// keeps across restarts, storing in the test's temporary directory.
type natsServer struct {
	port  int
	store string
	p     *proc
}

// startNATS starts nats-server and waits until it is ready. It is stopped
// when the test ends.
func startNATS(t testing.TB) *natsServer {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("the suite's binaries could not be built: %v", buildErr)
	}
	n := &natsServer{port: freePort(t), store: t.TempDir()}
	n.start(t)
	return n
}

// URL is the server's client URL; it does not change across restarts.
func (n *natsServer) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

func (n *natsServer) start(t testing.TB) {
	t.Helper()
	n.p = startProc(t, "nats-server", natsServerBin,
		"-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-js", "-sd", n.store, "-n", "telemesh-faults")
	if _, ok := n.p.waitLine(func(l string) bool { return strings.Contains(l, "Server is ready") }, startWait); !ok {
		t.Fatalf("nats-server on port %d not ready within %s:\n%s", n.port, startWait, n.p.output())
	}
}

// stop stops the server with SIGTERM, a clean shutdown that flushes its
// store; start runs it again on the same port and store.
func (n *natsServer) stop() { n.p.terminate(30 * time.Second) }

// connectNATS returns a JetStream client that reconnects forever, as a
// device gateway would; it is closed when the test ends.
func connectNATS(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	// Errors the connection meets on its own (a write to a server just
	// killed) go to the test's log while it runs, not to stderr.
	var (
		mu   sync.Mutex
		open = true
	)
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.RetryOnFailedConnect(true), nats.Name("telemesh-faults"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			defer mu.Unlock()
			if open {
				t.Logf("the suite's NATS connection: %v", err)
			}
		}))
	if err != nil {
		t.Fatalf("connect to NATS at %s: %v", url, err)
	}
	t.Cleanup(func() {
		mu.Lock()
		open = false
		mu.Unlock()
		nc.Close()
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// freePort returns a loopback port that nothing listens on and that no
// other test process of this machine holds, reserved until the test ends. A
// process that must keep its port across restarts (NATS, Postgres) needs one
// chosen up front, and while it restarts the port must stay its own: a port
// the kernel hands out for listening or connecting may be taken by any
// process meanwhile, so ports come from below the ephemeral range, reserved
// with a lock file that every suite on the machine honours.
func freePort(t testing.TB) int {
	t.Helper()
	if port, ok := reservePort(t); ok {
		return port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// proxy forwards loopback TCP connections to a target until it is cut: then
// it closes every connection it carries and refuses new ones (they are
// accepted and closed at once), as a network partition that resets
// connections would, until it is restored.
type proxy struct {
	target string
	ln     net.Listener

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// startProxy listens on a free loopback port; it is closed when the test
// ends.
func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// Addr is where clients connect.
func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// pipe copies from src to dst; when either side ends, both close.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, err := io.Copy(dst, src)
	_ = err // io.EOF or a closed connection: either way the pair is done
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// Cut closes every connection and refuses new ones until Restore.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		_ = c.Close()
	}
}

// Restore lets connections through again.
func (p *proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// waitStream waits until the stream exists (the gateway creates it).
func waitStream(t testing.TB, js jetstream.JetStream, name string) jetstream.Stream {
	t.Helper()
	var s jetstream.Stream
	testutil.Eventually(t, startWait, "stream "+name+" made by the gateway", func() error {
		var err error
		s, err = js.Stream(t.Context(), name)
		return err
	})
	return s
}
