package faults_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// clusterSize is how many nats-server processes a cluster has: three, as
// in production, so a stream of three replicas survives the loss of one.
const clusterSize = 3

// kvStream is the stream behind the publisher's device-states bucket.
const kvStream = "KV_device-states"

// natsNode is one server of a cluster: a nats-server process on loopback
// ports it keeps across restarts, with its own store.
type natsNode struct {
	name                           string
	port, clusterPort, monitorPort int
	// dir holds the configuration; store, under it, the JetStream store.
	dir, store string
	p          *proc
}

// natsCluster is three nats-server processes joined by cluster routes,
// with JetStream on each, as the NATS Helm chart runs them.
type natsCluster struct {
	nodes []*natsNode
}

// startNATSCluster starts the servers and waits until each one answers
// healthy (a JetStream meta leader elected and the server current). They
// are stopped when the test ends.
func startNATSCluster(t testing.TB) *natsCluster {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("the suite's binaries could not be built: %v", buildErr)
	}
	c := &natsCluster{}
	for i := range clusterSize {
		dir := t.TempDir()
		c.nodes = append(c.nodes, &natsNode{
			name: fmt.Sprintf("n%d", i+1), port: freePort(t), clusterPort: freePort(t), monitorPort: freePort(t),
			dir: dir, store: filepath.Join(dir, "store"),
		})
	}
	// A name of its own, so that servers of two clusters (two suites on
	// one machine) would refuse each other's routes rather than join.
	name := fmt.Sprintf("telemesh-faults-%d", c.nodes[0].clusterPort)
	routes := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		routes[i] = fmt.Sprintf("%q", "nats://127.0.0.1:"+strconv.Itoa(n.clusterPort))
	}
	for _, n := range c.nodes {
		conf := fmt.Sprintf(`server_name: %q
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
jetstream { store_dir: %q }
cluster {
  name: %q
  listen: "127.0.0.1:%d"
  routes: [%s]
}
`, n.name, n.port, n.monitorPort, n.store, name, n.clusterPort, strings.Join(routes, ", "))
		if err := os.WriteFile(n.conf(), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		n.start(t)
	}
	for _, n := range c.nodes {
		n.waitHealthy(t, 60*time.Second)
	}
	return c
}

// URLs lists every server's client URL, comma-separated, as the stages
// take them.
func (c *natsCluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		urls[i] = n.URL()
	}
	return strings.Join(urls, ",")
}

// node returns the server named name.
func (c *natsCluster) node(t testing.TB, name string) *natsNode {
	t.Helper()
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	t.Fatalf("no cluster node is named %q", name)
	return nil
}

// leader returns the server that leads stream, as its info says.
func (c *natsCluster) leader(t testing.TB, js jetstream.JetStream, stream string) *natsNode {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		s, err := js.Stream(ctx, stream)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = s.Info(ctx)
		}
		cancel()
		if err == nil && info.Cluster != nil && info.Cluster.Leader != "" {
			return c.node(t, info.Cluster.Leader)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader of stream %s within 30s (err %v)", stream, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// follower returns a server that replicates stream without leading it.
func (c *natsCluster) follower(t testing.TB, js jetstream.JetStream, stream string) *natsNode {
	t.Helper()
	leader := c.leader(t, js, stream)
	for _, n := range c.nodes {
		if n != leader {
			return n
		}
	}
	t.Fatalf("stream %s has no follower", stream)
	return nil
}

// waitHealthy waits until every server answers healthy.
func (c *natsCluster) waitHealthy(t testing.TB, within time.Duration) {
	t.Helper()
	for _, n := range c.nodes {
		n.waitHealthy(t, within)
	}
}

func (n *natsNode) conf() string { return filepath.Join(n.dir, "nats.conf") }

// URL is the server's client URL; it does not change across restarts.
func (n *natsNode) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

// start runs the server on its configuration and waits until it accepts
// clients. It does not wait for JetStream to be current: see waitHealthy.
func (n *natsNode) start(t testing.TB) {
	t.Helper()
	n.p = startProc(t, "nats-"+n.name, natsServerBin, "-c", n.conf())
	// A server recovers its whole store before it is ready: millions of
	// messages after a long soak take minutes.
	if _, ok := n.p.waitLine(func(l string) bool { return strings.Contains(l, "Server is ready") }, 5*time.Minute); !ok {
		t.Fatalf("nats-server %s not ready within 5m:\n%s", n.name, n.p.output())
	}
}

// kill ends the server with SIGKILL: nothing flushed, as a crash.
func (n *natsNode) kill(t testing.TB) {
	t.Helper()
	n.p.signal(t, syscall.SIGKILL)
	<-n.p.done
}

// stop ends the server with SIGTERM, a clean shutdown that flushes its
// store and hands its leaderships over, as a rolling restart does.
func (n *natsNode) stop(t testing.TB) {
	t.Helper()
	n.p.terminate(30 * time.Second)
}

// wipe removes the server's whole store, as a replaced disk would. The
// server must be stopped.
func (n *natsNode) wipe(t testing.TB) {
	t.Helper()
	if !n.p.exited() {
		t.Fatalf("nats-server %s: wipe while it runs", n.name)
	}
	if err := os.RemoveAll(n.store); err != nil {
		t.Fatalf("wipe the store of %s: %v", n.name, err)
	}
}

// healthy asks the server's /healthz, which answers 200 once JetStream
// has a meta leader and every stream and consumer the server replicates
// is current.
func (n *natsNode) healthy(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(n.monitorPort)+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// waitHealthy waits until the server answers healthy.
func (n *natsNode) waitHealthy(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		err := n.healthy(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server %s not healthy within %s: %v\n%s", n.name, within, err, n.p.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// localStream is what one server holds of a stream: its own replica, not
// what the leader answers for the group.
type localStream struct {
	Messages uint64 `json:"messages"`
	LastSeq  uint64 `json:"last_seq"`
}

// localStreams reads the server's own replicas of every stream from its
// monitoring port (/jsz with stream details), by stream name.
func (n *natsNode) localStreams(ctx context.Context) (map[string]localStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		"http://127.0.0.1:"+strconv.Itoa(n.monitorPort)+"/jsz?accounts=true&streams=true", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var jsz struct {
		Accounts []struct {
			Streams []struct {
				Name  string      `json:"name"`
				State localStream `json:"state"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&jsz); err != nil {
		return nil, fmt.Errorf("jsz of %s: %w", n.name, err)
	}
	out := map[string]localStream{}
	for _, a := range jsz.Accounts {
		for _, s := range a.Streams {
			out[s.Name] = s.State
		}
	}
	return out, nil
}

// waitCaughtUp waits until node holds, of each stream, the messages the
// stream's leader reports: a wiped server has caught up. It returns what
// the node holds, for the table's notes.
func (c *natsCluster) waitCaughtUp(t testing.TB, js jetstream.JetStream, node *natsNode, streams []string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		local, err := node.localStreams(ctx)
		var behind []string
		var held []string
		for _, name := range streams {
			if err != nil {
				break
			}
			var s jetstream.Stream
			s, err = js.Stream(ctx, name)
			if err != nil {
				break
			}
			var info *jetstream.StreamInfo
			if info, err = s.Info(ctx); err != nil {
				break
			}
			l, ok := local[name]
			held = append(held, fmt.Sprintf("%s %d messages up to sequence %d", name, l.Messages, l.LastSeq))
			if !ok || l.LastSeq != info.State.LastSeq || l.Messages != info.State.Msgs {
				behind = append(behind, fmt.Sprintf("%s: holds %d messages up to %d, the leader %d up to %d",
					name, l.Messages, l.LastSeq, info.State.Msgs, info.State.LastSeq))
			}
		}
		cancel()
		if err == nil && len(behind) == 0 {
			return strings.Join(held, ", ")
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server %s has not caught up within %s: %s (err %v)", node.name, within, strings.Join(behind, "; "), err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
