//go:build cgo

package pkcs11

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/internal/fair"
	"github.com/hmac-agent/hmac-agent/providers"
)

// session is a PKCS#11 session lent to one goroutine at a time.
type session struct {
	h     p11.SessionHandle
	epoch uint64 // the pool's epoch when opened
}

// pool bounds the sessions open on the token. idle holds sessions not in
// use; slots holds a token for every session that exists, so at most size
// are open.
//
// Requests that find no session free wait in line by caller (the
// providers.Budget their context carries, one per uid), and a session
// given back goes to the callers in turn, not to whoever asked first: a
// caller flooding the token with requests costs another caller one turn
// per round, not the length of its flood.
type pool struct {
	p     *Provider
	wait  time.Duration
	idle  chan *session
	slots chan struct{}
	waits atomic.Uint64 // requests that found no session free at once
	// epoch counts module re-initializations: a session of an older
	// epoch is gone, and its handle may now name another session.
	epoch atomic.Uint64

	mu      sync.Mutex // guards waiting and kept; taken after idle is found empty
	waiting fair.Queue[*waiter]
	// kept counts the sessions contexts keep for a streaming operation,
	// by caller, and keptTotal all of them (see reserveStream).
	// streamFreed is closed, and replaced, when one is given back.
	kept        map[*providers.Budget]int
	keptTotal   int
	streamFreed chan struct{}
}

// waiter is a request waiting for a session. It gets one on ch, or nil
// when a slot was taken for it and it opens its own.
type waiter struct {
	key any
	ch  chan *session
}

func newPool(p *Provider, size int, wait time.Duration) *pool {
	return &pool{p: p, wait: wait, idle: make(chan *session, size), slots: make(chan struct{}, size),
		kept: make(map[*providers.Budget]int), streamFreed: make(chan struct{})}
}

// keptMax is how many sessions contexts may keep at once: all but a
// quarter of the pool (at least one), which stays for one-shots and
// buffered contexts' single C_Sign. keptPerCaller is how many one caller's
// contexts may keep: all of those but one, so that one caller alone
// cannot keep another from streaming. A context keeps its session from
// the update that outgrows the buffer until it ends, which can be
// forever: without these bounds, one caller holding eight contexts that
// had each streamed a byte past the buffer held every session, and every
// other caller's request failed after session_wait. With half of keptMax
// per caller, one caller's six parallel 70 MB streams failed: those past
// the share buffered in memory until the caller's max_bytes_per_uid was
// full, and its other requests failed with them. Now they buffer only
// while the budget is at most half spent, then wait for a share
// (awaitStream).
func keptMax(size int) int       { return size - max(1, size/4) }
func keptPerCaller(size int) int { return max(1, keptMax(size)-1) }

// reserveStream reserves a kept session for a context of caller b, and
// reports whether it may: false past either bound, when the context goes
// on buffering its input in memory, charged to b, and asks again at its
// next update. Each true is matched by one releaseStream.
func (pl *pool) reserveStream(b *providers.Budget) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.reserveStreamLocked(b)
}

func (pl *pool) reserveStreamLocked(b *providers.Budget) bool {
	size := cap(pl.slots)
	if pl.keptTotal >= keptMax(size) || pl.kept[b] >= keptPerCaller(size) {
		return false
	}
	pl.kept[b]++
	pl.keptTotal++
	return true
}

// awaitStream is reserveStream for a context whose caller's budget can
// buffer no more: it waits for a reservation to be given back, as a
// request that finds no session free waits for one, until ctx ends or
// session_wait passes. It waits at most half the provider's timeout: a
// call the agent sees run past that is taken for a device that stopped
// answering, and a caller waiting on its own streams must not make the
// token look down to everyone. Past that, it fails with ErrLimit: the
// caller streams more at once than it may.
func (pl *pool) awaitStream(ctx context.Context, b *providers.Budget) error {
	wait := min(pl.wait, pl.p.cfg.Timeout/2)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		pl.mu.Lock()
		ok := pl.reserveStreamLocked(b)
		freed := pl.streamFreed
		pl.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-freed:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			size := cap(pl.slots)
			return providers.Publicf(providers.ErrLimit,
				"too many PKCS#11 streams at once: none of the %d sessions provider %q lets streams keep (%d for one caller) came free within %s; raise sessions",
				keptMax(size), pl.p.cfg.Name, keptPerCaller(size), wait)
		}
	}
}

// releaseStream gives back a reservation reserveStream made.
func (pl *pool) releaseStream(b *providers.Budget) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.kept[b]--; pl.kept[b] <= 0 {
		delete(pl.kept, b)
	}
	pl.keptTotal--
	close(pl.streamFreed)
	pl.streamFreed = make(chan struct{})
}

// get returns an idle session, opens a new one if the pool has room, or
// waits in its caller's line for one until ctx ends or the configured
// wait passes.
func (pl *pool) get(ctx context.Context) (*session, error) {
	select {
	case s := <-pl.idle:
		return s, nil
	default:
	}
	if s, open, ok := pl.free(); ok {
		if open {
			return pl.open()
		}
		return s, nil
	}
	pl.waits.Add(1)
	pl.mu.Lock()
	// Looked at again under mu: a session given back since went to idle
	// only if no one was waiting.
	if s, open, ok := pl.free(); ok {
		pl.mu.Unlock()
		if open {
			return pl.open()
		}
		return s, nil
	}
	w := &waiter{key: providers.BudgetFrom(ctx), ch: make(chan *session, 1)}
	pl.waiting.Push(w.key, w)
	pl.mu.Unlock()
	timer := time.NewTimer(pl.wait)
	defer timer.Stop()
	var err error
	select {
	case s := <-w.ch:
		if s == nil {
			return pl.open()
		}
		return s, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = providers.Publicf(providers.ErrUnavailable,
			"no PKCS#11 session free within %s (provider %q has %d; raise sessions or session_wait)",
			pl.wait, pl.p.cfg.Name, cap(pl.slots))
	}
	pl.mu.Lock()
	gone := pl.waiting.Remove(w.key, w)
	pl.mu.Unlock()
	if !gone {
		// Served as it gave up: pass on what it was given.
		if s := <-w.ch; s != nil {
			pl.handOff(s)
		} else {
			<-pl.slots
			pl.wake()
		}
	}
	return nil, err
}

// free takes an idle session, or a slot to open one in (open), without
// waiting; ok is false if neither is free.
func (pl *pool) free() (s *session, open, ok bool) {
	select {
	case s := <-pl.idle:
		return s, false, true
	default:
	}
	select {
	case pl.slots <- struct{}{}:
		return nil, true, true
	default:
		return nil, false, false
	}
}

// handOff gives a session to the caller whose turn it is, or to idle if
// no one waits.
func (pl *pool) handOff(s *session) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if w, ok := pl.waiting.Pop(); ok {
		w.ch <- s
		return
	}
	select {
	case pl.idle <- s:
	default: // cannot happen: a session has a slot
		go pl.discard(s)
	}
}

// wake lets waiters open sessions in slots that came free.
func (pl *pool) wake() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for pl.waiting.Len() > 0 {
		select {
		case pl.slots <- struct{}{}:
		default:
			return
		}
		w, _ := pl.waiting.Pop()
		w.ch <- nil
	}
}

// open opens a session in the slot the caller took, and gives the slot
// back if it cannot.
func (pl *pool) open() (*session, error) {
	h, err := pl.p.ctx.OpenSession(pl.p.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		<-pl.slots
		pl.wake()
		return nil, classify("open session", err)
	}
	return &session{h: h, epoch: pl.epoch.Load()}, nil
}

// stale reports whether s is from before the module was re-initialized.
func (pl *pool) stale(s *session) bool { return s.epoch != pl.epoch.Load() }

// reset forgets every session, when the module is about to be finalized,
// which closes them all. Sessions lent out are stale from here on: put
// drops them without touching their handles. The caller holds the
// module's calls exclusively, so no one is in get.
func (pl *pool) reset() {
	pl.epoch.Add(1)
	for {
		select {
		case <-pl.idle:
			continue
		default:
		}
		break
	}
	for len(pl.slots) > 0 {
		<-pl.slots
	}
	pl.wake()
}

// put returns a session after use; err is the last call's result. A
// session that err says is broken is closed and its place freed.
func (pl *pool) put(s *session, err error) {
	if pl.stale(s) {
		return // its place went with the old module
	}
	if err != nil && sessionBroken(err) {
		pl.discard(s)
		return
	}
	pl.handOff(s)
}

func (pl *pool) discard(s *session) {
	if pl.stale(s) {
		return
	}
	pl.p.ctx.CloseSession(s.h)
	<-pl.slots
	pl.wake()
}

// closeAll closes every idle session. Sessions held by contexts are
// closed with the module.
func (pl *pool) closeAll() {
	for {
		select {
		case s := <-pl.idle:
			pl.discard(s)
		default:
			pl.p.ctx.CloseAllSessions(pl.p.slot)
			return
		}
	}
}
