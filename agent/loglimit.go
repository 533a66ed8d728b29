package agent

import (
	"sync"
	"time"
)

// Denial and error lines are written at a rate each caller cannot raise:
// a caller that is denied in a loop would otherwise fill the disk that
// the audit log is on, and bury the lines of everyone else. Lines past a
// caller's rate are counted, and the count rides on that caller's next
// line that is let through.
const (
	// logLinesPerSecond is the steady rate of one caller's denial and
	// error lines.
	logLinesPerSecond = 5
	// logLinesBurst is how many a quiet caller may write at once.
	logLinesBurst = 20
	// maxLoggedCallers bounds the limiter's memory. Past it, callers
	// whose allowance is whole are forgotten (they lose nothing); if
	// every caller is busy, new ones share one allowance.
	maxLoggedCallers = 4096
)

// sharedCaller is the allowance callers share when the limiter is full.
// No caller has this uid: it is the "nobody" of overflow IDs, (uid_t)-1.
const sharedCaller = ^uint32(0)

// logLimiter is a token bucket per caller uid. It is safe for concurrent
// use.
type logLimiter struct {
	mu      sync.Mutex
	callers map[uint32]*logAllowance
	rate    float64 // lines per second
	burst   float64
}

type logAllowance struct {
	tokens     float64
	last       time.Time
	suppressed uint64
}

func newLogLimiter(rate, burst float64) *logLimiter {
	return &logLimiter{callers: make(map[uint32]*logAllowance), rate: rate, burst: burst}
}

// allow reports whether uid may write a line now and, if so, how many of
// its lines were left out since its last one.
func (l *logLimiter) allow(uid uint32, now time.Time) (ok bool, leftOut uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.callers[uid]
	if c == nil {
		if len(l.callers) >= maxLoggedCallers {
			l.forgetWholeLocked(now)
		}
		if len(l.callers) >= maxLoggedCallers {
			uid = sharedCaller
			c = l.callers[uid]
		}
		if c == nil {
			c = &logAllowance{tokens: l.burst, last: now}
			l.callers[uid] = c
		}
	}
	l.refill(c, now)
	if c.tokens < 1 {
		c.suppressed++
		return false, 0
	}
	c.tokens--
	leftOut, c.suppressed = c.suppressed, 0
	return true, leftOut
}

func (l *logLimiter) refill(c *logAllowance, now time.Time) {
	if d := now.Sub(c.last); d > 0 {
		c.tokens = min(l.burst, c.tokens+d.Seconds()*l.rate)
		c.last = now
	}
}

// forgetWholeLocked drops callers whose allowance has grown back whole
// and who have no count waiting: forgetting them changes nothing.
func (l *logLimiter) forgetWholeLocked(now time.Time) {
	for uid, c := range l.callers {
		l.refill(c, now)
		if c.tokens >= l.burst && c.suppressed == 0 {
			delete(l.callers, uid)
		}
	}
}

// size is how many callers the limiter holds, for tests.
func (l *logLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.callers)
}
