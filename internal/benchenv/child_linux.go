package benchenv

import "syscall"

// childAttr has the agent told to stop when this process dies, even by
// SIGKILL, which StopOnSignal cannot catch.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
