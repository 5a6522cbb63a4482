package viewer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/testutil"
)

// clientFrom returns an HTTP client whose connections come from the
// loopback address ip (any of 127.0.0.0/8 works on Linux), so a test can
// be several clients at once.
func clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext, MaxConnsPerHost: 0, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// liveAnswer is how the viewer answered one attempt at a live connection.
type liveAnswer struct {
	status int
	// body is the answer of a refused attempt.
	body string
}

// openLive tries a live connection with the client and header. An
// accepted one stays open until the test ends.
func (e *env) openLive(c *http.Client, header http.Header) liveAnswer {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/api/events", nil)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := c.Do(req)
	if err != nil {
		cancel()
		e.t.Fatalf("live connection: %v", err)
	}
	if res.StatusCode == http.StatusOK {
		e.t.Cleanup(func() {
			cancel()
			_ = res.Body.Close()
		})
		return liveAnswer{status: res.StatusCode}
	}
	defer cancel()
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return liveAnswer{status: res.StatusCode, body: string(b)}
}

// count tallies statuses as "200×8 429×62".
func count(answers []liveAnswer) string {
	n := map[int]int{}
	for _, a := range answers {
		n[a.status]++
	}
	var keys []int
	for k := range n {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d×%d", k, n[k]))
	}
	return strings.Join(parts, " ")
}

func TestOneAddressCannotTakeEveryLiveSlot(t *testing.T) {
	t.Parallel()
	// The defaults: 64 live connections in all, 8 from one address.
	e := newEnv(t, nil)
	greedy := clientFrom(t, "127.0.0.1")
	answers := make([]liveAnswer, 70)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = e.openLive(greedy, nil)
		}()
	}
	wg.Wait()
	if got := count(answers); got != "200×8 429×62" {
		t.Errorf("70 live connections from one address: %s, want 200×8 429×62", got)
	}
	for _, a := range answers {
		if a.status != http.StatusOK {
			if msg := checkOneLine(t, "a refused live connection", a.body); !strings.Contains(msg, "this address") {
				t.Errorf("refusal %q does not say it is this address's share", msg)
			}
			break
		}
	}
	// Another client still gets in.
	if a := e.openLive(clientFrom(t, "127.0.0.2"), nil); a.status != http.StatusOK {
		t.Errorf("another address while one holds its share: %d %s, want 200", a.status, a.body)
	}
	// A slot given back is the address's again.
	testutil.Eventually(t, 5*time.Second, "live connections counted", func() error {
		if !(e.srv.hub.clientCount() == 9) {
			return errors.New("not yet")
		}
		return nil
	})
}

func TestPerClientLimitBehindTrustedProxy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) {
		c.MaxClients = 20
		c.MaxClientsPerAddr = 2
		c.TrustedProxies = []string{"127.0.0.1/32", "10.0.0.0/8"}
	})
	proxy := clientFrom(t, "127.0.0.1")
	xff := func(v string) http.Header { return http.Header{"X-Forwarded-For": {v}} }

	// Behind the trusted proxy, each forwarded address has its share.
	for i, tc := range []struct {
		header http.Header
		want   int
	}{
		{xff("203.0.113.5"), http.StatusOK},
		{xff("203.0.113.5"), http.StatusOK},
		{xff("203.0.113.5"), http.StatusTooManyRequests},
		{xff("203.0.113.6"), http.StatusOK},
		// A client cannot pick its address by sending the header itself:
		// the proxy appends the address it saw, and that one counts (the
		// nearest one that is not a trusted proxy).
		{xff("198.51.100.1, 203.0.113.5"), http.StatusTooManyRequests},
		{xff("198.51.100.2, 203.0.113.6, 10.1.2.3"), http.StatusOK},
		{xff("198.51.100.3, 203.0.113.6, 10.1.2.3"), http.StatusTooManyRequests},
		// IPv6 clients are counted by their /64.
		{xff("2001:db8:1:2::1"), http.StatusOK},
		{xff("2001:db8:1:2::2"), http.StatusOK},
		{xff("2001:db8:1:2:ffff::3"), http.StatusTooManyRequests},
		{xff("2001:db8:1:3::1"), http.StatusOK},
	} {
		if a := e.openLive(proxy, tc.header); a.status != tc.want {
			t.Errorf("#%d via the trusted proxy with %v: %d %s, want %d", i, tc.header, a.status, a.body, tc.want)
		}
	}

	// From an address that is not a trusted proxy the header is ignored:
	// the address itself is the client, whatever it claims.
	direct := clientFrom(t, "127.0.0.3")
	var got []int
	for _, claim := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"} {
		got = append(got, e.openLive(direct, xff(claim)).status)
	}
	if fmt.Sprint(got) != "[200 200 429 429]" {
		t.Errorf("an untrusted peer sending X-Forwarded-For: %v, want [200 200 429 429]", got)
	}
}

func TestClientAddress(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TrustedProxies = []string{"10.0.0.0/8", "fd00::/8", "192.0.2.7"}
	cfg.ClientIPHeader = "X-Real-Ip"
	proxies, err := parseProxies(cfg.TrustedProxies)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{cfg: cfg, proxies: proxies}
	for _, tc := range []struct {
		remote, header, want string
	}{
		{"203.0.113.9:4000", "", "203.0.113.9"},
		{"203.0.113.9:4000", "198.51.100.1", "203.0.113.9"}, // not a proxy: header ignored
		{"10.1.1.1:4000", "198.51.100.1", "198.51.100.1"},
		{"192.0.2.7:4000", "198.51.100.1", "198.51.100.1"}, // a single trusted address
		{"10.1.1.1:4000", "", "10.1.1.1"},                  // no header: the proxy itself
		{"10.1.1.1:4000", "not-an-address", "10.1.1.1"},    // unusable: the proxy itself
		{"10.1.1.1:4000", "198.51.100.1, garbage", "10.1.1.1"},
		{"10.1.1.1:4000", "198.51.100.1:5555", "198.51.100.1"},
		{"10.1.1.1:4000", "[2001:db8::1]:443", "2001:db8::/64"},
		{"10.1.1.1:4000", "10.2.2.2, 10.3.3.3", "10.2.2.2"}, // all trusted: the farthest
		{"[fd00::1]:4000", "2001:db8:aa:bb:1::9", "2001:db8:aa:bb::/64"},
		{"[::ffff:10.1.1.1]:4000", "::ffff:198.51.100.1", "198.51.100.1"},
		{"[2001:db8:5:6:7::1]:4000", "", "2001:db8:5:6::/64"},
	} {
		r, _ := http.NewRequest(http.MethodGet, "/api/events", nil)
		r.RemoteAddr = tc.remote
		if tc.header != "" {
			r.Header.Set("X-Real-IP", tc.header)
		}
		if got := s.clientKey(r); got != tc.want {
			t.Errorf("remote %s, header %q: client %q, want %q", tc.remote, tc.header, got, tc.want)
		}
	}
	for _, bad := range [][]string{{"10.0.0.0/33"}, {"not-a-cidr"}, {""}} {
		if _, err := parseProxies(bad); err == nil {
			t.Errorf("parseProxies(%q) accepted", bad)
		}
	}
}
