package agent

import (
	"runtime"
	"sync"

	"github.com/hmac-agent/hmac-agent/internal/fair"
)

// DefaultParallelism is how many one-shots the agent runs at once on a
// provider that does not say (providers.Parallel).
const DefaultParallelism = 4

// scheduler runs a device's one-shot calls, at most limit at once, and
// queues the rest by caller (the providers.Budget of the call's context,
// one per uid), serving callers in turn. Without it every one-shot had a
// goroutine of its own at once, and a caller with thousands in flight put
// each other caller's request behind all of them: in the device's
// session pool, and in the Go scheduler's run queue, where the victim's
// own reader waited too.
//
// While more than one uid has a session (shared), one caller runs at most
// limit-1 calls at once, the way the socket's CPU gate keeps a slot from
// any one caller. A call into a PKCS#11 library holds its thread, and
// the Go scheduler finds sockets that became readable only when a P has
// nothing to run: a caller whose calls kept every P busy hid another
// caller's next request from the agent for milliseconds, and that
// caller's call, when it came, waited behind a running one besides. A
// lone caller has every slot.
//
// Its methods are safe for concurrent use.
type scheduler struct {
	limit  int
	shared func() bool // nil: never shared

	mu      sync.Mutex
	running int
	byKey   map[any]int // calls running, by caller
	waiting fair.Queue[*job]
}

// job is a call waiting for its turn. run gets a release func that gives
// the turn to the next job; it is safe to call more than once, and must
// be called at least once: when the call returns, or when it is abandoned
// at its deadline, whichever comes first.
type job struct {
	run func(release func())
}

func newScheduler(limit int, shared func() bool) *scheduler {
	if limit <= 0 {
		limit = DefaultParallelism
	}
	return &scheduler{limit: limit, shared: shared, byKey: make(map[any]int)}
}

// perKey is how many calls one caller may run at once now.
func (s *scheduler) perKey() int {
	if s.limit > 1 && s.shared != nil && s.shared() {
		return s.limit - 1
	}
	return s.limit
}

// submit runs j now on a goroutine of its own if its caller may start a
// call, else queues it behind key's earlier jobs.
func (s *scheduler) submit(key any, run func(release func())) {
	s.mu.Lock()
	if s.running < s.limit && s.byKey[key] < s.perKey() && s.waiting.Len() == 0 {
		s.startLocked(key)
		s.mu.Unlock()
		go run(s.releaser(key))
		return
	}
	s.waiting.Push(key, &job{run: run})
	s.dispatchLocked(false)
	s.mu.Unlock()
}

func (s *scheduler) startLocked(key any) {
	s.running++
	s.byKey[key]++
}

// releaser returns the release func of one of key's turns.
func (s *scheduler) releaser(key any) func() {
	var once sync.Once
	return func() { once.Do(func() { s.next(key) }) }
}

// next ends a turn of key's: the next callers' jobs get what is free.
func (s *scheduler) next(key any) {
	s.mu.Lock()
	s.running--
	if s.byKey[key]--; s.byKey[key] == 0 {
		delete(s.byKey, key)
	}
	s.dispatchLocked(true)
	s.mu.Unlock()
}

// dispatchLocked starts the waiting jobs, callers in turn, while there
// is a free slot and a caller under its limit waits for it. A job
// started from a finishing call (afterCall) goes behind the goroutines
// already ready: a new goroutine runs next on this P with the rest of the
// ending one's time slice, and turn after turn a busy device's calls
// would so keep every goroutine the network made ready waiting, another
// caller's reader among them, until the runtime preempts the chain 10 ms
// later.
func (s *scheduler) dispatchLocked(afterCall bool) {
	per := s.perKey()
	eligible := func(key any) bool { return s.byKey[key] < per }
	for s.running < s.limit {
		key, j, ok := s.waiting.PopIf(eligible)
		if !ok {
			return
		}
		s.startLocked(key)
		rel := s.releaser(key)
		// The call keeps the normal kernel priority, even for a caller
		// that floods the device: a call into a PKCS#11 library holds its
		// P, and a thread at nice 19 preempted mid-call kept it from
		// every other caller's request. Run in the background, the
		// one-shot flood left a victim's p99 at 15-25x its quiet one; at
		// the normal priority, 5-7x.
		go func() {
			if afterCall {
				runtime.Gosched()
			}
			j.run(rel)
		}()
	}
}
