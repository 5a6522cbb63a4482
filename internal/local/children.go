package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"
)

// ErrChildExited is the cause of every [ChildExitError].
var ErrChildExited = errors.New("exited unexpectedly")

// ChildExitError says which child process exited while it was meant to be
// running, and how.
type ChildExitError struct {
	// Name and PID identify the child.
	Name string
	PID  int
	// Err is how it exited (an *exec.ExitError), or nil for exit code 0.
	Err error
	// BeforeReady says it exited while starting.
	BeforeReady bool
}

// Error returns one line naming the child and how it exited.
func (e *ChildExitError) Error() string {
	how := "with exit code 0"
	if e.Err != nil {
		how = e.Err.Error()
	}
	when := ""
	if e.BeforeReady {
		when = " before it was ready"
	}
	return fmt.Sprintf("%s (pid %d) %s%s: %s", e.Name, e.PID, ErrChildExited, when, how)
}

// Unwrap lets errors.Is(err, ErrChildExited) hold.
func (e *ChildExitError) Unwrap() error { return ErrChildExited }

// ChildSpec is one process to start.
type ChildSpec struct {
	// Name prefixes every line of the child's output and names it in errors.
	Name string
	// Path and Args are the program and its arguments (without argv[0]).
	Path string
	Args []string
	// Env is the child's whole environment.
	Env []string
	// ReadyURL is polled until it answers 200 OK; Start returns then.
	ReadyURL string
}

// Child is a started child process.
type Child struct {
	Spec ChildSpec
	PID  int

	cmd      *exec.Cmd
	out      *prefixWriter
	done     chan struct{}
	err      error
	stopping atomic.Bool
}

// Children starts child processes one after another, each once the one
// before is ready, reports any that exits on its own, and stops them in
// the reverse of the start order. Each child is in a process group of its
// own, so a Ctrl-C at the terminal reaches only the parent, which then
// stops the children in order rather than all at once.
type Children struct {
	// Out receives every child's output, line by line, each line prefixed
	// with the child's name.
	Out io.Writer
	// Grace is how long a child has to exit after SIGTERM before it is
	// killed.
	Grace time.Duration
	// ReadyTimeout bounds the wait for a child's ReadyURL.
	ReadyTimeout time.Duration

	outMu  sync.Mutex
	mu     sync.Mutex
	list   []*Child
	exited chan error
	once   sync.Once
}

// exitedChan returns the channel of unexpected exits, made on first use.
func (c *Children) exitedChan() chan error {
	c.once.Do(func() { c.exited = make(chan error, 64) })
	return c.exited
}

// Exited receives a [ChildExitError] for every child that exits on its own
// after it was ready.
func (c *Children) Exited() <-chan error { return c.exitedChan() }

// Start starts the child and returns once its ReadyURL answers 200 OK. A
// child that exits first is a [ChildExitError] with BeforeReady set; one
// that is not ready within ReadyTimeout is stopped.
func (c *Children) Start(ctx context.Context, spec ChildSpec) (*Child, error) {
	exited := c.exitedChan()
	ch := &Child{Spec: spec, done: make(chan struct{})}
	ch.out = &prefixWriter{prefix: []byte(fmt.Sprintf("%-10s| ", spec.Name)), mu: &c.outMu, w: c.Out}
	ch.cmd = exec.Command(spec.Path, spec.Args...)
	ch.cmd.Env = spec.Env
	// One writer for both streams: exec then writes from one goroutine at a
	// time, so lines of stdout and stderr do not interleave mid-line.
	ch.cmd.Stdout, ch.cmd.Stderr = ch.out, ch.out
	ch.cmd.SysProcAttr = childProcAttr()
	if err := ch.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	ch.PID = ch.cmd.Process.Pid
	go func() {
		ch.err = ch.cmd.Wait()
		ch.out.flush()
		close(ch.done)
	}()
	c.mu.Lock()
	c.list = append(c.list, ch)
	c.mu.Unlock()

	if err := c.waitReady(ctx, ch); err != nil {
		c.stopOne(ch)
		return nil, err
	}
	go func() {
		<-ch.done
		if !ch.stopping.Load() {
			exited <- &ChildExitError{Name: spec.Name, PID: ch.PID, Err: ch.err}
		}
	}()
	return ch, nil
}

// waitReady polls the child's ReadyURL until it answers 200 OK.
func (c *Children) waitReady(ctx context.Context, ch *Child) error {
	timeout := c.ReadyTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, ch.Spec.ReadyURL, nil)
		if err != nil {
			return fmt.Errorf("%s readiness: %w", ch.Spec.Name, err)
		}
		if resp, err := client.Do(req); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ch.done:
			return &ChildExitError{Name: ch.Spec.Name, PID: ch.PID, Err: ch.err, BeforeReady: true}
		case <-ctx.Done():
			return fmt.Errorf("%s (pid %d) not ready at %s within %s: %w", ch.Spec.Name, ch.PID, ch.Spec.ReadyURL, timeout, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop stops every child still running, the last started first: SIGTERM,
// then SIGKILL if it has not exited within Grace. It waits for each
// before stopping the next, so no child outlives the one that calls it,
// and returns what went wrong with any of them.
func (c *Children) Stop() error {
	c.mu.Lock()
	list := append([]*Child(nil), c.list...)
	c.mu.Unlock()
	for _, ch := range list {
		ch.stopping.Store(true)
	}
	var errs []error
	for i := len(list) - 1; i >= 0; i-- {
		if err := c.stopOne(list[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stopOne stops one child and waits for it. A child that had already
// exited is not an error here: its exit was reported when it happened.
func (c *Children) stopOne(ch *Child) error {
	select {
	case <-ch.done:
		return nil
	default:
	}
	ch.stopping.Store(true)
	if err := terminate(ch.cmd.Process); err != nil {
		select {
		case <-ch.done:
			return nil
		default:
		}
		return fmt.Errorf("stop %s (pid %d): %w", ch.Spec.Name, ch.PID, err)
	}
	grace := c.Grace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	select {
	case <-ch.done:
		if ch.err != nil {
			return fmt.Errorf("%s (pid %d) stopped with %w", ch.Spec.Name, ch.PID, ch.err)
		}
		return nil
	case <-time.After(grace):
	}
	_ = ch.cmd.Process.Kill()
	<-ch.done
	return fmt.Errorf("%s (pid %d) did not stop within %s of SIGTERM and was killed", ch.Spec.Name, ch.PID, grace)
}

// prefixWriter writes whole lines, each prefixed, to w under mu, so the
// lines of several children never mix.
type prefixWriter struct {
	prefix []byte
	mu     *sync.Mutex
	w      io.Writer
	buf    []byte
}

// Write buffers p and writes out every complete line.
func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.writeLine(p.buf[:i+1])
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

// flush writes a last line that has no newline.
func (p *prefixWriter) flush() {
	if len(p.buf) > 0 {
		p.writeLine(append(p.buf, '\n'))
		p.buf = nil
	}
}

func (p *prefixWriter) writeLine(line []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A child's output is best effort: a closed terminal must not stop it.
	_, _ = p.w.Write(append(append([]byte{}, p.prefix...), line...))
}
