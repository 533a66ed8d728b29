//go:build cgo

package pkcs11

import (
	"context"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"

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
type pool struct {
	p     *Provider
	wait  time.Duration
	idle  chan *session
	slots chan struct{}
	waits atomic.Uint64 // requests that found no session free at once
	// epoch counts module re-initializations: a session of an older
	// epoch is gone, and its handle may now name another session.
	epoch atomic.Uint64
}

func newPool(p *Provider, size int, wait time.Duration) *pool {
	return &pool{p: p, wait: wait, idle: make(chan *session, size), slots: make(chan struct{}, size)}
}

// get returns an idle session, opens a new one if the pool has room, or
// waits for one until ctx ends or the configured wait passes.
func (pl *pool) get(ctx context.Context) (*session, error) {
	select {
	case s := <-pl.idle:
		return s, nil
	default:
	}
	if len(pl.slots) == cap(pl.slots) {
		pl.waits.Add(1)
	}
	timer := time.NewTimer(pl.wait)
	defer timer.Stop()
	select {
	case s := <-pl.idle:
		return s, nil
	case pl.slots <- struct{}{}:
		return pl.open()
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, providers.Publicf(providers.ErrUnavailable,
			"no PKCS#11 session free within %s (provider %q has %d; raise sessions or session_wait)",
			pl.wait, pl.p.cfg.Name, cap(pl.slots))
	}
}

// open opens a session in the slot the caller took, and gives the slot
// back if it cannot.
func (pl *pool) open() (*session, error) {
	h, err := pl.p.ctx.OpenSession(pl.p.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		<-pl.slots
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
	select {
	case pl.idle <- s:
	default: // cannot happen: a session has a slot
		pl.discard(s)
	}
}

func (pl *pool) discard(s *session) {
	if pl.stale(s) {
		return
	}
	pl.p.ctx.CloseSession(s.h)
	<-pl.slots
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
