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
// Its methods are safe for concurrent use.
type scheduler struct {
	limit int

	mu      sync.Mutex
	running int
	waiting fair.Queue[*job]
}

// job is a call waiting for its turn. run gets a release func that gives
// the turn to the next job; it is safe to call more than once, and must
// be called at least once: when the call returns, or when it is abandoned
// at its deadline, whichever comes first.
type job struct {
	run func(release func())
}

func newScheduler(limit int) *scheduler {
	if limit <= 0 {
		limit = DefaultParallelism
	}
	return &scheduler{limit: limit}
}

// submit runs j now on a goroutine of its own if fewer than limit run,
// else queues it behind key's earlier jobs.
func (s *scheduler) submit(key any, run func(release func())) {
	s.mu.Lock()
	if s.running < s.limit && s.waiting.Len() == 0 {
		s.running++
		s.mu.Unlock()
		go run(s.releaser())
		return
	}
	s.waiting.Push(key, &job{run: run})
	s.mu.Unlock()
}

// releaser returns the release func of one turn.
func (s *scheduler) releaser() func() {
	var once sync.Once
	return func() { once.Do(s.next) }
}

// next ends a turn: the next caller's job gets it, or it is given back.
func (s *scheduler) next() {
	s.mu.Lock()
	j, ok := s.waiting.Pop()
	if !ok {
		s.running--
	}
	s.mu.Unlock()
	if ok {
		go func() {
			// A new goroutine runs next on this P with the rest of the
			// ending one's time slice; turn after turn, a busy device's
			// calls would so keep every goroutine the network made
			// ready waiting, another caller's reader among them, until
			// the runtime preempts the chain 10 ms later. This call
			// takes its place behind them instead.
			runtime.Gosched()
			j.run(s.releaser())
		}()
	}
}
