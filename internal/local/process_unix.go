//go:build unix

package local

import (
	"errors"
	"os"
	"syscall"
)

// processAlive reports whether a process with id pid exists. Signal 0
// checks without sending anything; EPERM means it exists but belongs to
// another user.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// terminate asks the process to stop gracefully.
func terminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }
