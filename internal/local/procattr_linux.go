package local

import "syscall"

// childProcAttr puts a child in a process group of its own, so a Ctrl-C at
// the terminal reaches only its parent, and has the kernel send it SIGTERM
// if the parent dies without stopping it (killed with SIGKILL, say), so no
// stage outlives `telemesh up`. The kernel ties that signal to the thread
// that started the child; the Go runtime keeps its threads for the life of
// the process unless a goroutine exits while locked to one, which nothing
// here does.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
