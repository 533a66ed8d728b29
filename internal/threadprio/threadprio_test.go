//go:build linux

package threadprio

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// requireAvailable fails the test under CI, and skips it elsewhere,
// where this process may not set a thread's nice value back.
func requireAvailable(t *testing.T) {
	t.Helper()
	if !Available() {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set, and this process may not set a thread's nice value back (it runs as root there)")
		}
		t.Skip("this process may not set a thread's nice value back")
	}
}

// nice reads the calling thread's nice value.
func nice(t *testing.T) int {
	t.Helper()
	n, err := ThreadNice(unix.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestBackgroundAndBack: the goroutine's thread runs at Nice inside
// Background and at 0 again after, on the same thread throughout.
func TestBackgroundAndBack(t *testing.T) {
	requireAvailable(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	restore, thread := Background()
	if got := nice(t); got != Nice {
		t.Errorf("inside Background: nice %d, want %d", got, Nice)
	}
	if thread != tid || Thread() != tid {
		t.Errorf("Background says thread %d, Thread %d, want %d", thread, Thread(), tid)
	}
	runtime.Gosched()
	if unix.Gettid() != tid {
		t.Error("the goroutine left its thread inside Background")
	}
	restore()
	if got := nice(t); got != 0 {
		t.Errorf("after restore: nice %d, want 0", got)
	}
}

// TestNewThreadsKeepNiceZero: threads the runtime starts while a
// goroutine runs in the background do not inherit its value.
func TestNewThreadsKeepNiceZero(t *testing.T) {
	requireAvailable(t)
	done := make(chan struct{})
	inBackground := make(chan struct{})
	go func() {
		restore, _ := Background()
		defer restore()
		close(inBackground)
		<-done
	}()
	<-inBackground
	// Each locked goroutine needs a thread of its own: the runtime starts
	// them now, while the background goroutine holds its thread.
	const n = 8
	nices := make(chan int, n)
	release := make(chan struct{})
	for range n {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			nices <- nice(t)
			<-release
		}()
	}
	for range n {
		if got := <-nices; got != 0 {
			t.Errorf("a thread started meanwhile has nice %d", got)
		}
	}
	close(release)
	close(done)
}
