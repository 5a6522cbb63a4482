//go:build !unix

package faults_test

import "testing"

// reservePort has no lock files to offer here: freePort asks the kernel.
func reservePort(testing.TB) (int, bool) { return 0, false }
