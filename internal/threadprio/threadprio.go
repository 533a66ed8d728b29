// Package threadprio runs a goroutine's work at a lower kernel priority
// for a while: the agent's work for a caller that floods it, so that
// another caller's request, which the agent serves on threads of the same
// process, is not kept waiting by the kernel behind threads busy with the
// flood.
//
// Linux keeps a nice value per thread. Background locks the goroutine to
// its thread and raises that thread's nice value; the func it returns
// lowers it back and unlocks. Threads the runtime starts meanwhile come
// from its template thread (started by the first LockOSThread, before any
// change here), so they do not inherit the raised value.
//
// Lowering a nice value back needs CAP_SYS_NICE or an RLIMIT_NICE that
// allows it (systemd: LimitNICE=+0). Available checks once that the
// process may; where it may not, Background does nothing, since a thread
// left at a raised value would slow every caller whose work later ran on
// it.
//
// Its functions are safe for concurrent use.
package threadprio

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// Nice is the value background work runs at: a thread at 19 gets about
// 1.5% of a CPU against one at 0 when both want it, and the whole CPU
// when no one else does.
const Nice = 19

var (
	once      sync.Once
	available bool
	disabled  atomic.Bool
)

// Disable turns Background into a no-op from now on, for a process whose
// system call filter does not allow setpriority (a filter may kill the
// process for the call, not fail it).
func Disable() { disabled.Store(true) }

// Available reports whether this process may raise a thread's nice value
// and lower it back. The first call tries it.
func Available() bool {
	if disabled.Load() {
		return false
	}
	once.Do(func() {
		done := make(chan bool)
		go func() {
			runtime.LockOSThread()
			ok := setNice(1) == nil && setNice(0) == nil
			if ok {
				runtime.UnlockOSThread()
			}
			// Otherwise the goroutine ends locked, and the runtime ends its
			// thread with it: no thread stays at the raised value.
			done <- ok
		}()
		available = <-done
	})
	return available
}

// Background runs the calling goroutine at Nice until restore is called,
// on the same goroutine, and returns the thread it is locked to
// meanwhile (see Thread), or 0 where it does nothing: where Available is
// false, or the thread's priority could not be lowered.
func Background() (restore func(), thread int) {
	if !Available() {
		return func() {}, 0
	}
	runtime.LockOSThread()
	if setNice(Nice) != nil {
		runtime.UnlockOSThread()
		return func() {}, 0
	}
	return func() {
		if setNice(0) == nil {
			runtime.UnlockOSThread()
		}
		// A thread that could not be set back stays locked to this
		// goroutine, and ends with it.
	}, Thread()
}
