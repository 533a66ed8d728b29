//go:build !linux

package benchenv

import "syscall"

func childAttr() *syscall.SysProcAttr { return nil }
