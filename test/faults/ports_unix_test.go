//go:build unix

package faults_test

import (
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// reservedPorts is the range reservePort picks from: below the kernel's
// ephemeral range (32768 and up by default), so no connection is ever given
// one as its local port, and above the well-known services.
const (
	reservedPortsLow  = 20000
	reservedPortsHigh = 32000
)

// reservePort picks a port of the reserved range, takes its lock file (a
// flock, released when the test ends or the process dies) and checks that
// nothing listens on it. It reports false where the range overlaps this
// machine's ephemeral ports or the lock directory cannot be made.
func reservePort(t testing.TB) (int, bool) {
	t.Helper()
	if low, ok := ephemeralLow(); ok && low <= reservedPortsHigh {
		return 0, false
	}
	dir := filepath.Join(os.TempDir(), "telemesh-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, false
	}
	for range 200 {
		port := reservedPortsLow + rand.IntN(reservedPortsHigh-reservedPortsLow)
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)+".lock"), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			continue
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close() // another test process holds it
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			f.Close() // something outside the suites listens on it
			continue
		}
		ln.Close()
		t.Cleanup(func() { f.Close() })
		return port, true
	}
	return 0, false
}

// ephemeralLow is the first port of the kernel's ephemeral range, where
// Linux tells it.
func ephemeralLow() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0, false
	}
	low, err := strconv.Atoi(fields[0])
	return low, err == nil
}
