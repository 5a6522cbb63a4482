//go:build !linux

package bench_test

import "syscall"

// procAttr is nil where the kernel cannot kill a process with its parent.
func procAttr() *syscall.SysProcAttr { return nil }
