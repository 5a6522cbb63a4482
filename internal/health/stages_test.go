package health

import (
	"net"
	"strings"
	"testing"
	"time"
)

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestCheckTargetDNSAndLists(t *testing.T) {
	closed := closedPort(t)
	// Generous timeouts: a closed port refuses at once, and resolving
	// localhost must not time out on a busy machine.
	const timeout = 30 * time.Second
	h := CheckTarget(t.Context(), "validator", closed+","+closed, timeout)
	if h.Status == Serving || len(h.Addresses) != 2 {
		t.Errorf("list target: %+v", h)
	}
	h = CheckTarget(t.Context(), "validator", "dns:///localhost:"+strings.Split(closed, ":")[1], timeout)
	if h.Status == Serving || len(h.Addresses) == 0 {
		t.Errorf("dns target: %+v", h)
	}
	h = CheckTarget(t.Context(), "validator", "", timeout)
	if h.Status != "UNKNOWN" {
		t.Errorf("empty target: %+v", h)
	}
}
