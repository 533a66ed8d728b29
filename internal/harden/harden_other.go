//go:build !linux

// Package harden makes the agent's process harder to read from outside.
package harden

import "errors"

var errUnsupported = errors.New("harden: not supported on this system")

// NoDump is only implemented on Linux.
func NoDump() error { return errUnsupported }

// Dumpable is only implemented on Linux.
func Dumpable() (bool, error) { return true, errUnsupported }
