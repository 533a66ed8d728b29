package threadprio

import "golang.org/x/sys/unix"

// setNice sets the calling thread's nice value.
func setNice(n int) error {
	return unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), n)
}
