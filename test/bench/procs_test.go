package bench_test

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// keepLines bounds the output a proc keeps: enough to see why a run
// failed, not the whole of a long one.
const keepLines = 200

// proc is a process the harness started: nats-server, a telemesh stage or
// the in-process mesh. It keeps the last lines of its output.
type proc struct {
	name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	lines   []string
	dropped int
	// changed is closed and replaced whenever a line arrives.
	changed chan struct{}
	done    chan struct{}
	waitErr error
}

// startProc runs bin with args. Its environment is the harness's without
// any TELEMESH_* or OTEL_* setting, so the caller's shell cannot change
// what runs (a traced run says in env what it traces), plus env. The
// process is killed when the test ends, if it still runs.
func startProc(tb testing.TB, name, bin string, env []string, args ...string) *proc {
	tb.Helper()
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = procAttr()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TELEMESH_") && !strings.HasPrefix(kv, "OTEL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr // keep both streams, in order
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, changed: make(chan struct{}), done: make(chan struct{})}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.add(sc.Text())
		}
	}()
	go func() {
		<-scanned
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.done)
	}()
	tb.Cleanup(p.kill)
	return p
}

// pid is the process id, for reading /proc.
func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) add(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, line)
	if len(p.lines) > 2*keepLines {
		p.dropped += len(p.lines) - keepLines
		p.lines = append([]string(nil), p.lines[len(p.lines)-keepLines:]...)
	}
	close(p.changed)
	p.changed = make(chan struct{})
}

// waitLine waits until a kept line for which match is true has arrived,
// the process has exited, or timeout has passed. It returns the line and
// whether one matched.
func (p *proc) waitLine(match func(string) bool, timeout time.Duration) (string, bool) {
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if match(l) {
				p.mu.Unlock()
				return l, true
			}
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.done:
			// The scanner has read every line by now: one last look.
			p.mu.Lock()
			defer p.mu.Unlock()
			for _, l := range p.lines {
				if match(l) {
					return l, true
				}
			}
			return "", false
		case <-deadline:
			return "", false
		}
	}
}

// output returns the lines kept, for a failure message.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	head := ""
	if p.dropped > 0 {
		head = "... (" + strconv.Itoa(p.dropped) + " earlier lines not kept)\n"
	}
	return head + strings.Join(p.lines, "\n")
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitErr is how the process ended: nil for a clean exit, else the
// status. Call it once the process has exited.
func (p *proc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// kill sends SIGKILL and waits for the exit.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// terminate sends SIGTERM and waits up to grace for the exit, then kills.
// It reports whether the process ended on its own within grace and
// cleanly.
func (p *proc) terminate(grace time.Duration) bool {
	if p.exited() {
		return false
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.exitErr() == nil
	case <-time.After(grace):
		p.kill()
		return false
	}
}
