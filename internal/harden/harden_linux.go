//go:build linux

// Package harden makes the agent's process harder to read from outside.
package harden

import "golang.org/x/sys/unix"

// NoDump makes the process non-dumpable: no core dumps, and processes of
// the same uid cannot ptrace it or read its memory through /proc.
func NoDump() error {
	return unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
}

// Dumpable reports the current setting, for tests and status.
func Dumpable() (bool, error) {
	v, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	return v != 0, err
}
