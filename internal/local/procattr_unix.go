//go:build unix && !linux

package local

import "syscall"

// childProcAttr puts a child in a process group of its own, so a Ctrl-C at
// the terminal reaches only its parent, which stops the children in order.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
