package agent

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/memreturn"
	"github.com/hmac-agent/hmac-agent/providers"
)

// Limits bound what one client can take. Past each, that client gets an
// error wrapping providers.ErrLimit and everyone else is served as before.
type Limits struct {
	// MaxContextsPerSession bounds open contexts on one connection.
	MaxContextsPerSession int
	// MaxContextsPerUID bounds open contexts of one uid over all its
	// connections, so one caller cannot take the agent's whole
	// MaxContexts from the others.
	MaxContextsPerUID int
	// MaxContexts bounds open contexts in the whole agent.
	MaxContexts int
	// MaxBytesPerUID bounds the bytes one uid makes the agent hold: its
	// requests queued for a device, frames being read, input a device's
	// contexts buffer or keep for copies (see providers.Budget).
	MaxBytesPerUID int64
	// MaxBytes bounds the same over all uids together. Its last eighth
	// (32 MiB at the default) is kept for uids holding little: a uid that
	// would hold more than MaxBytes/64, and at least 2 MiB (4 MiB at the
	// default), is refused past the rest, so a few uids at MaxBytesPerUID
	// cannot lock the others out (providers.Budget, "The reserved
	// share").
	MaxBytes int64
	// IdleContextTimeout frees a context nobody used for this long; the
	// next request on it says so. Negative disables it.
	IdleContextTimeout time.Duration
}

// DefaultLimits are safe for a machine serving many processes: a software
// context costs well under a kilobyte, and one uid can make the agent hold
// at most MaxBytesPerUID of data.
var DefaultLimits = Limits{
	MaxContextsPerSession: 16384,
	MaxContextsPerUID:     16384,
	MaxContexts:           262144,
	MaxBytesPerUID:        64 << 20,
	MaxBytes:              256 << 20,
	IdleContextTimeout:    10 * time.Minute,
}

func (l *Limits) fill() {
	if l.MaxContextsPerSession <= 0 {
		l.MaxContextsPerSession = DefaultLimits.MaxContextsPerSession
	}
	if l.MaxContextsPerUID <= 0 {
		l.MaxContextsPerUID = DefaultLimits.MaxContextsPerUID
	}
	if l.MaxContexts <= 0 {
		l.MaxContexts = DefaultLimits.MaxContexts
	}
	if l.MaxBytesPerUID <= 0 {
		l.MaxBytesPerUID = DefaultLimits.MaxBytesPerUID
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultLimits.MaxBytes
	}
	switch {
	case l.IdleContextTimeout == 0:
		l.IdleContextTimeout = DefaultLimits.IdleContextTimeout
	case l.IdleContextTimeout < 0:
		l.IdleContextTimeout = 0
	}
}

// caller is what one uid holds in the agent over all its sessions.
type caller struct {
	uid      uint32
	sessions int // guarded by callers.mu
	contexts atomic.Int64
	budget   *providers.Budget
}

// callers tracks the uids with a session open. It is safe for concurrent
// use.
type callers struct {
	total *providers.Budget // every caller's, together

	mu  sync.Mutex
	uid map[uint32]*caller
	// shared is whether more than one uid has a session: callers then
	// take a device in turn with one call fewer than its limit each
	// (scheduler).
	shared atomic.Bool

	// memory returns to the system what sessions leave free when they
	// close: after a caller's burst (hundreds of connections, contexts
	// full of input) the agent's memory goes back to where it was, not
	// minutes later.
	memory memreturn.Returner
}

// newCaller returns a caller not yet in cs, for uid.
func (cs *callers) newCaller(uid uint32, maxBytes int64) *caller {
	return &caller{uid: uid, budget: providers.NewBudget(maxBytes, cs.total, "limits.max_bytes_per_uid")}
}

// join returns uid's caller, made if it has no session yet.
func (cs *callers) join(uid uint32, maxBytes int64) *caller {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.uid == nil {
		cs.uid = make(map[uint32]*caller)
	}
	c := cs.uid[uid]
	if c == nil {
		c = cs.newCaller(uid, maxBytes)
		cs.uid[uid] = c
		cs.shared.Store(len(cs.uid) > 1)
	}
	c.sessions++
	return c
}

// leave drops a session of c's; the last one forgets the uid. What the
// session held is free now, and is given back to the system once the
// sessions closing together have all closed.
func (cs *callers) leave(c *caller) {
	defer cs.memory.Poke()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.uid[c.uid] != c {
		return // a peer without credentials, never joined
	}
	c.sessions--
	if c.sessions == 0 {
		delete(cs.uid, c.uid)
		cs.shared.Store(len(cs.uid) > 1)
		if len(cs.uid) == 0 {
			cs.uid = nil // a map never shrinks: let a crowd's go
		}
	}
}

// BytesHeld is what the agent holds for callers now, over all uids (see
// Limits.MaxBytes).
func (a *Agent) BytesHeld() int64 { return a.callers.total.Held() }

// BytesHeldBy is what the agent holds for uid now (see
// Limits.MaxBytesPerUID); 0 for a uid with no session.
func (a *Agent) BytesHeldBy(uid uint32) int64 {
	cs := &a.callers
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c := cs.uid[uid]; c != nil {
		return c.budget.Held()
	}
	return 0
}
