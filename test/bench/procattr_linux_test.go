package bench_test

import "syscall"

// procAttr makes the kernel kill a started process when the test binary
// dies, so a run that panics (a -timeout) leaves no process behind.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
