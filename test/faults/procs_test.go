package faults_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// keepLines bounds the output a proc keeps: enough to see why a test
// failed, not the whole of a long run.
const keepLines = 300

// proc is a process the suite started: a telemesh stage, nats-server or a
// Postgres tool. It keeps the last lines of its output.
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

// startProc runs bin with args and an environment cleared of TELEMESH_*
// settings, so the caller's shell cannot change what the suite runs. The
// process is killed when the test ends.
func startProc(t testing.TB, name, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = procAttr()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TELEMESH_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var logFile *os.File
	if dir := os.Getenv(EnvLogs); dir != "" {
		// The whole output, for reading after the run.
		f, err := os.OpenFile(filepath.Join(dir, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+"."+name+".log"),
			os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatalf("%s: %v", EnvLogs, err)
		}
		logFile = f
	}
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr // nats-server and telemesh log to stderr; keep both
	if err := cmd.Start(); err != nil {
		if logFile != nil {
			_ = logFile.Close()
		}
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, changed: make(chan struct{}), done: make(chan struct{})}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.add(sc.Text())
			if logFile != nil {
				_, _ = logFile.WriteString(sc.Text() + "\n")
			}
		}
		if logFile != nil {
			_ = logFile.Close()
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
	t.Cleanup(func() { p.kill() })
	return p
}

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

// exitErr is how the process ended: nil for a clean exit, else the
// status. Call it once the process has exited.
func (p *proc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
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

// signal sends sig, ignoring a process that has already gone.
func (p *proc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if p.exited() {
		t.Fatalf("%s: cannot send %v: it has exited\n%s", p.name, sig, p.output())
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: send %v: %v", p.name, sig, err)
	}
}

// kill sends SIGKILL (which also ends a stopped process) and waits for the
// exit.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// terminate sends SIGTERM and waits up to grace for the exit, then kills.
func (p *proc) terminate(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}
