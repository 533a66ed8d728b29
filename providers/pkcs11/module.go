//go:build cgo

package pkcs11

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// A module may be initialized once per process, and finalizing it ends
// every session of every user, so providers on the same library share one
// context with a reference count.
var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

type module struct {
	ctx  *p11.Ctx
	path string
	refs int // guarded by modulesMu

	// calls is held shared by every call into the module, by every
	// provider on it, and exclusively to finalize it: a call in flight
	// during C_Finalize crashes the process.
	calls sync.RWMutex
	// users are the providers open on the module; dead is set when the
	// last one closed it. Both are guarded by calls, taken exclusively
	// to change them.
	users map[*Provider]bool
	dead  bool

	// objects is held by every change to the token's objects (create,
	// destroy, relabel) and by a rotation from its first read of the
	// records to its commit. SoftHSM2's object store is not safe for
	// such changes on several threads at once: a thread that searches
	// refreshes every object whose file changed, discarding its
	// attributes and reading them back from the file, while the thread
	// making the object goes on writing them (file locks do not exclude
	// threads of one process). An object in the making then loses its
	// CKA_CLASS (C_CreateObject fails with CKR_TEMPLATE_INCONSISTENT), and
	// a claim read at that moment matches no search, so two rotations
	// each saw none but their own and made one version twice. Agents in
	// other processes have their own store, locked per file.
	objects sync.Mutex
	// indexMu orders searches against creating token objects (index.go);
	// it is taken inside objects, never around it.
	indexMu sync.Mutex

	recovering atomic.Bool // a recovery loop runs
	// deferredSince is when recovery first held back for the streams of
	// providers still up on the module; zero when it is not holding
	// back. Guarded by calls, taken exclusively.
	deferredSince time.Time
}

func openModule(path string) (*module, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m := modules[path]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := p11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11: cannot load module %s", path)
	}
	if err := ctx.Initialize(); err != nil && rv(err) != p11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		ctx.Destroy()
		return nil, fmt.Errorf("pkcs11: initialize %s: %w", path, err)
	}
	m := &module{ctx: ctx, path: path, refs: 1, users: map[*Provider]bool{}}
	modules[path] = m
	return m, nil
}

// release drops a reference; the last one finalizes the module. The caller
// holds calls exclusively, or is the only user.
func (m *module) release() {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	m.dead = true
	delete(modules, m.path)
	m.ctx.Finalize()
	m.ctx.Destroy()
}

// Recovery backoff: the first try comes soon, the later ones less often,
// so a token that stays away costs little.
const (
	firstRetry = 50 * time.Millisecond
	maxRetry   = 2 * time.Second
)

// maxDefer bounds how long recovery holds back for streams on the
// module's other tokens, which re-initializing the module would cut:
// while one token stays away, a try every maxRetry would otherwise cut
// every stream on the tokens that are fine, again and again.
const maxDefer = 30 * time.Second

// startRecovery starts the recovery loop unless one runs.
func (m *module) startRecovery() {
	if m.recovering.CompareAndSwap(false, true) {
		go m.recoverLoop()
	}
}

// recoverLoop re-initializes the module until every provider on it has
// its token back, or none is left.
func (m *module) recoverLoop() {
	wait := firstRetry
	for {
		time.Sleep(wait)
		if m.tryRecover() {
			m.recovering.Store(false)
			// A provider that went down after the last look would
			// have found the loop running: look once more.
			if !m.anyDown() || !m.recovering.CompareAndSwap(false, true) {
				return
			}
			wait = firstRetry
			continue
		}
		wait = min(2*wait, maxRetry)
	}
}

func (m *module) anyDown() bool {
	m.calls.RLock()
	defer m.calls.RUnlock()
	for p := range m.users {
		if p.down.Load() {
			return true
		}
	}
	return false
}

// tryRecover waits until no call is in flight, finalizes and initializes
// the module, and opens every provider on it again: token found by label,
// logged in anew. It reports whether the loop is done: all are up, or
// nobody is left.
func (m *module) tryRecover() bool {
	// TryLock rather than Lock: a waiting Lock would hold up every new
	// call behind a call that may be stuck in the token. Down providers
	// fail at once without entering, so only others' calls are waited
	// for.
	for !m.calls.TryLock() {
		time.Sleep(time.Millisecond)
	}
	defer m.calls.Unlock()
	if m.dead || len(m.users) == 0 {
		return true
	}
	if m.streamingLocked() {
		if m.deferredSince.IsZero() {
			m.deferredSince = time.Now()
		}
		if time.Since(m.deferredSince) < maxDefer {
			return false
		}
	}
	m.deferredSince = time.Time{}
	for p := range m.users {
		p.resetLocked()
	}
	m.ctx.Finalize()
	if err := m.ctx.Initialize(); err != nil && rv(err) != p11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		for p := range m.users {
			p.setDown(fmt.Errorf("pkcs11: initialize %s: %w", m.path, err))
		}
		return false
	}
	up := true
	for p := range m.users {
		if err := p.reopenLocked(); err != nil {
			p.setDown(err)
			up = false
			continue
		}
		p.setUp()
	}
	return up
}

// streamingLocked reports whether a provider that is up holds sessions
// for streams: with calls held exclusively, no call is in flight, so a
// session out of the pool is a context's. The caller holds calls
// exclusively.
func (m *module) streamingLocked() bool {
	for p := range m.users {
		if !p.down.Load() && len(p.pool.slots) > len(p.pool.idle) {
			return true
		}
	}
	return false
}
