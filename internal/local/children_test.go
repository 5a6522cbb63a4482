package local

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// childMode, when set in the environment, makes the test binary act as a
// child process for the tests of Children instead of running the tests.
const childMode = "TELEMESH_LOCAL_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childMode) {
	case "":
		os.Exit(m.Run())
	case "exit-early":
		fmt.Println("cannot start")
		os.Exit(3)
	case "serve", "ignore-term":
		runTestChild(os.Getenv(childMode) == "ignore-term")
	}
}

// runTestChild serves /readyz on CHILD_ADDR and exits 0 on SIGTERM, or
// ignores SIGTERM when told to.
func runTestChild(ignoreTerm bool) {
	term := make(chan os.Signal, 1)
	if ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(term, syscall.SIGTERM)
	}
	ln, err := net.Listen("tcp", os.Getenv("CHILD_ADDR"))
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	}()
	fmt.Println("serving")
	fmt.Fprint(os.Stderr, "a line without a newline")
	<-term
	fmt.Println("\nstopped")
	os.Exit(0)
}

// syncBuffer collects the children's output.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.WriteString(string(p))
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freeAddr returns a loopback address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// testChild returns the spec of a child running this test binary in mode.
func testChild(t *testing.T, name, mode string) ChildSpec {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	return ChildSpec{Name: name, Path: exe, Env: append(os.Environ(), childMode+"="+mode, "CHILD_ADDR="+addr),
		ReadyURL: "http://" + addr + "/readyz"}
}

// gone reports whether no process with id pid exists any more.
func gone(pid int) bool { return syscall.Kill(pid, 0) == syscall.ESRCH }

func TestChildrenStopInReverseOrder(t *testing.T) {
	out := &syncBuffer{}
	c := &Children{Out: out, Grace: 10 * time.Second}
	var pids []int
	for _, name := range []string{"first", "second", "third"} {
		ch, err := c.Start(t.Context(), testChild(t, name, "serve"))
		if err != nil {
			t.Fatalf("start %s: %v\n%s", name, err, out)
		}
		pids = append(pids, ch.PID)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	for _, pid := range pids {
		if !gone(pid) {
			t.Errorf("pid %d still exists after Stop", pid)
		}
	}
	text := out.String()
	for _, line := range []string{"first     | serving\n", "second    | a line without a newline\n", "third     | stopped\n"} {
		if !strings.Contains(text, line) {
			t.Errorf("output lacks %q:\n%s", line, text)
		}
	}
	third, second, first := strings.Index(text, "third     | stopped"), strings.Index(text, "second    | stopped"), strings.Index(text, "first     | stopped")
	if !(third < second && second < first) {
		t.Errorf("children did not stop third, second, first:\n%s", text)
	}
	select {
	case err := <-c.Exited():
		t.Errorf("a child stopped by Stop is reported as exiting on its own: %v", err)
	default:
	}
}

func TestChildExitingBeforeReady(t *testing.T) {
	out := &syncBuffer{}
	c := &Children{Out: out}
	_, err := c.Start(t.Context(), testChild(t, "early", "exit-early"))
	var exit *ChildExitError
	if !errors.As(err, &exit) || !exit.BeforeReady || exit.Name != "early" || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("err %v, want a ChildExitError before ready with exit status 3", err)
	}
	if !strings.Contains(out.String(), "early     | cannot start\n") {
		t.Errorf("output of the child lost:\n%s", out)
	}
}

func TestChildExitingOnItsOwnIsReported(t *testing.T) {
	c := &Children{Out: &syncBuffer{}}
	t.Cleanup(func() { _ = c.Stop() })
	ch, err := c.Start(t.Context(), testChild(t, "victim", "serve"))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(ch.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.Exited():
		var exit *ChildExitError
		if !errors.As(err, &exit) || exit.PID != ch.PID || !errors.Is(err, ErrChildExited) || !strings.Contains(err.Error(), "killed") {
			t.Errorf("reported %v, want victim (pid %d) exited unexpectedly: signal: killed", err, ch.PID)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a killed child was not reported within 30s")
	}
}

func TestChildIgnoringSIGTERMIsKilledAfterGrace(t *testing.T) {
	c := &Children{Out: &syncBuffer{}, Grace: 300 * time.Millisecond}
	ch, err := c.Start(t.Context(), testChild(t, "stubborn", "ignore-term"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Stop()
	if err == nil || !strings.Contains(err.Error(), "did not stop within 300ms") {
		t.Errorf("stop: %v, want it killed after the grace", err)
	}
	if !gone(ch.PID) {
		t.Errorf("pid %d still exists after Stop", ch.PID)
	}
}
