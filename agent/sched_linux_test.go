package agent

import (
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/internal/threadprio"
)

// TestFloodCallsRunInTheBackground: while shared, a call of a caller
// with more calls waiting runs at threadprio.Nice; the other caller's
// call, alone in its line, at the normal priority.
func TestFloodCallsRunInTheBackground(t *testing.T) {
	if !threadprio.Available() {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set, and this process may not set a thread's nice value back (it runs as root there)")
		}
		t.Skip("this process may not set a thread's nice value back")
	}
	var shared atomic.Bool
	shared.Store(true)
	s := newScheduler(2, shared.Load)
	hold := make(chan struct{})
	type seen struct {
		who  string
		nice int
	}
	seenc := make(chan seen, 20)
	var wg sync.WaitGroup
	call := func(who string, wait bool) func(func()) {
		wg.Add(1)
		return func(release func()) {
			defer wg.Done()
			if wait {
				<-hold
			}
			seenc <- seen{who, threadNice(t)}
			release()
		}
	}
	s.submit("flood", call("first", true)) // started at once: nothing waits yet
	for range 5 {
		s.submit("flood", call("flood", false))
	}
	s.submit("victim", call("victim", false))
	close(hold)
	wg.Wait()
	close(seenc)
	floods := 0
	for v := range seenc {
		switch {
		case v.who == "victim" && v.nice != 0:
			t.Errorf("the other caller's call ran at nice %d", v.nice)
		case v.who == "flood" && v.nice == threadprio.Nice:
			floods++
		}
	}
	// The flood's last call has none waiting behind it.
	if floods < 4 {
		t.Errorf("%d of the flood's 5 queued calls ran in the background, want at least 4", floods)
	}
}

// threadNice reads the calling thread's nice value.
func threadNice(t *testing.T) int {
	t.Helper()
	n, err := threadprio.ThreadNice(unix.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	return n
}
