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
// the turn to the next job at once, for a call abandoned at its deadline
// whose goroutine the call still holds; it is safe to call more than
// once. A call that returns need not call it: the turn passes when run
// returns, to the next job on the same goroutine. run returns what is
// left to do once the turn has passed (the call's reply), or nil: that
// may wait on the caller's peer, and a turn held meanwhile would let a
// client that never reads its replies keep the device from every other
// caller.
type job struct {
	run func(release func()) (after func())
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
func (s *scheduler) submit(key any, run func(release func()) (after func())) {
	s.mu.Lock()
	if s.running < s.limit && s.byKey[key] < s.perKey() && s.waiting.Len() == 0 {
		s.startLocked(key)
		s.mu.Unlock()
		go s.work(key, &job{run: run}, false)
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

func (s *scheduler) endLocked(key any) {
	s.running--
	if s.byKey[key]--; s.byKey[key] == 0 {
		delete(s.byKey, key)
	}
}

// work runs j in one of key's turns and, while the turn passes to a job
// waiting, that job too: a busy device's calls run on one goroutine each
// slot, not one goroutine each call (whose stack grew anew through every
// PKCS#11 call, and whose start woke another thread). Each job after the
// first goes behind the goroutines already ready (yield): otherwise the
// chain of calls keeps this P, and every goroutine the network made
// ready meanwhile, another caller's reader among them, waits until the
// runtime preempts it 10 ms later. A call abandoned at its deadline
// passes its turn on at once (release), to a goroutine of its own, and
// this one ends when the call returns at last.
func (s *scheduler) work(key any, j *job, yield bool) {
	for j != nil {
		if yield {
			runtime.Gosched()
		}
		var once sync.Once
		after := j.run(func() { once.Do(func() { s.next(key) }) })
		var nextKey any
		var next *job
		once.Do(func() { nextKey, next = s.handOver(key) })
		if after != nil {
			// The turn has passed: the reply waits for no device, and
			// the next call for no reply. With a call to run next, the
			// reply goes to a goroutine of its own, whose stack a reply
			// keeps small.
			if next != nil {
				go after()
			} else {
				after()
			}
		}
		key, j, yield = nextKey, next, true
	}
}

// next ends a turn of key's: the next callers' jobs get what is free.
func (s *scheduler) next(key any) {
	s.mu.Lock()
	s.endLocked(key)
	s.dispatchLocked(true)
	s.mu.Unlock()
}

// handOver ends a turn of key's and returns the job that takes it, with
// its caller, for the goroutine that ran the turn to run next; other
// free slots go to jobs as in next.
func (s *scheduler) handOver(key any) (any, *job) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endLocked(key)
	k, j, ok := s.popLocked()
	if !ok {
		return nil, nil
	}
	s.dispatchLocked(true)
	return k, j
}

// popLocked takes the next waiting job, callers in turn, if a slot is
// free and a caller under its limit waits for it, and starts its turn.
func (s *scheduler) popLocked() (any, *job, bool) {
	if s.running >= s.limit {
		return nil, nil, false
	}
	per := s.perKey()
	key, j, ok := s.waiting.PopIf(func(key any) bool { return s.byKey[key] < per })
	if ok {
		s.startLocked(key)
	}
	return key, j, ok
}

// dispatchLocked starts the waiting jobs that may start, each on a
// goroutine of its own. One started from a finishing call (afterCall)
// goes behind the goroutines already ready, as in work.
//
// A call keeps the normal kernel priority, even for a caller that floods
// the device: a call into a PKCS#11 library holds its P, and a thread at
// nice 19 preempted mid-call kept it from every other caller's request.
// Run in the background, the one-shot flood left a victim's p99 at
// 15-25x its quiet one; at the normal priority, 5-7x.
func (s *scheduler) dispatchLocked(afterCall bool) {
	for {
		key, j, ok := s.popLocked()
		if !ok {
			return
		}
		go s.work(key, j, afterCall)
	}
}
