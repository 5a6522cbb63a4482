//go:build !unix

package local

import "os"

// processAlive reports whether a process with id pid exists.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	_ = p.Release()
	return true
}

// terminate stops the process; there is no SIGTERM to send here.
func terminate(p *os.Process) error { return p.Kill() }
