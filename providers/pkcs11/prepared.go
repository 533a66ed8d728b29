//go:build cgo

package pkcs11

import (
	"context"
	"slices"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/providers"
)

// A one-shot MAC is C_SignInit then C_Sign, and C_SignInit is most of its
// cost: SoftHSM2 checks the key object's file, and a network HSM answers
// each call over the network. A prepared session has had C_SignInit run
// for a key and mechanism, on another goroutine, while the agent waited
// for the client's next request; that request is then C_Sign alone.
//
// A prepared operation has the key loaded, so a key deleted from the token
// by another program could still sign through it. It is used only within
// preparedMaxAge of its C_SignInit, dropped when the agent deletes a key
// or logs in again, and never kept past Close.

// preparedMaxAge bounds how long after C_SignInit a prepared session may
// sign. A variable for tests.
var preparedMaxAge = 200 * time.Millisecond

// prepared is a session on which C_SignInit runs or has run for k and
// mech. ready is closed, and done set under prepMu, when it has; s is nil
// then if C_SignInit failed. Whoever removes it from Provider.prep owns
// it.
type prepared struct {
	k     *key
	mech  uint
	gen   uint64 // the login, and
	epoch uint64 // the deletions it was prepared under
	at    time.Time
	s     *session
	ready chan struct{}
	done  bool
}

// Prepare readies a session for a one-shot on k with alg: it takes a free
// session, if the pool has one now and fewer than the configured number
// are prepared, and runs C_SignInit on it. A one-shot that comes
// meanwhile, on another goroutine, waits for it rather than start its own.
func (k *key) Prepare(_ context.Context, alg providers.Algorithm) {
	p := k.p
	mech, ok := p.mech[alg]
	if !ok || !k.algs[alg] || p.cfg.PreparedSessions == 0 {
		return
	}
	if p.enter() != nil {
		return
	}
	defer p.leave()
	pr := p.reservePrepared(k, mech)
	if pr == nil {
		return
	}
	h, err := k.objectHandle(pr.s)
	if err == nil {
		err = p.ctx.SignInit(pr.s.h, []*p11.Mechanism{p11.NewMechanism(mech, nil)}, h)
	}
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	if err != nil {
		p.pool.put(pr.s, err)
		pr.s = nil
		p.removeLocked(pr) // unless a one-shot has claimed it
	}
	pr.done = true
	close(pr.ready)
}

// reservePrepared lists a prepared operation for k and mech, not ready
// yet, with a free session; nil if there is no room or no free session.
func (p *Provider) reservePrepared(k *key, mech uint) *prepared {
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	p.dropExpiredLocked(time.Now())
	if len(p.prep) >= p.cfg.PreparedSessions {
		return nil
	}
	s := p.pool.tryGet()
	if s == nil {
		return nil
	}
	pr := &prepared{k: k, mech: mech, gen: p.gen.Load(), epoch: p.prepEpoch.Load(),
		at: time.Now(), ready: make(chan struct{}), s: s}
	p.prep = append(p.prep, pr)
	if !p.reaping {
		p.reaping = true
		time.AfterFunc(preparedMaxAge, p.reapPrepared)
	}
	return pr
}

// signPrepared signs data on a session prepared for k and mech, if there
// is one, waiting for its C_SignInit if need be. A failure is not
// reported: the caller signs again from the start, with the retries that
// brings.
func (k *key) signPrepared(ctx context.Context, mech uint, data []byte) ([]byte, bool) {
	p := k.p
	if p.enter() != nil {
		return nil, false
	}
	defer p.leave()
	pr := p.claimPrepared(k, mech)
	if pr == nil {
		return nil, false
	}
	select {
	case <-pr.ready:
	case <-ctx.Done():
		// Its session goes back once C_SignInit is done.
		go func() {
			<-pr.ready
			if p.enter() == nil {
				p.cancelPrepared(pr)
				p.leave()
			}
		}()
		return nil, false
	}
	if !p.current(pr) { // a login or a deletion while it was readied
		p.cancelPrepared(pr)
		return nil, false
	}
	if pr.s == nil {
		return nil, false
	}
	tag, err := p.ctx.Sign(pr.s.h, data)
	p.pool.put(pr.s, err)
	if err != nil {
		return nil, false
	}
	p.prepUsed.Add(1)
	return tag, true
}

// claimPrepared removes and returns an operation prepared or being
// prepared for k and mech that may still sign, or nil.
func (p *Provider) claimPrepared(k *key, mech uint) *prepared {
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	if len(p.prep) == 0 {
		return nil
	}
	p.dropExpiredLocked(time.Now())
	for i, pr := range p.prep {
		if pr.k == k && pr.mech == mech && p.current(pr) {
			p.prep = slices.Delete(p.prep, i, i+1)
			return pr
		}
	}
	return nil
}

// current reports whether pr was prepared under this login and after the
// last deletion.
func (p *Provider) current(pr *prepared) bool {
	return pr.gen == p.gen.Load() && pr.epoch == p.prepEpoch.Load()
}

// dropExpiredLocked cancels the prepared operations that may no longer
// sign: too old, or from before a login or a deletion. One still being
// readied is left: it is new.
func (p *Provider) dropExpiredLocked(now time.Time) {
	p.prep = slices.DeleteFunc(p.prep, func(pr *prepared) bool {
		if !pr.done { // being readied
			return false
		}
		if p.current(pr) && now.Sub(pr.at) < preparedMaxAge {
			return false
		}
		p.cancelPrepared(pr)
		return true
	})
}

// reapPrepared cancels expired prepared operations, so that none outlives
// its use by long when the one-shots stop, and looks again later while
// any remain.
func (p *Provider) reapPrepared() {
	if p.enter() != nil {
		return
	}
	defer p.leave()
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	p.dropExpiredLocked(time.Now())
	if len(p.prep) == 0 {
		p.reaping = false
		return
	}
	time.AfterFunc(preparedMaxAge, p.reapPrepared)
}

// dropPrepared makes every operation prepared so far unusable, as after a
// key was deleted, and cancels those that are ready; the others are
// cancelled when next looked at. The caller is inside a call (p.enter).
func (p *Provider) dropPrepared() {
	p.prepEpoch.Add(1)
	p.prepMu.Lock()
	p.dropExpiredLocked(time.Now())
	p.prepMu.Unlock()
}

// removeLocked takes pr out of the list if it is there.
func (p *Provider) removeLocked(pr *prepared) {
	if i := slices.Index(p.prep, pr); i >= 0 {
		p.prep = slices.Delete(p.prep, i, i+1)
	}
}

// reclaimPrepared cancels a ready prepared operation and returns its
// session, for a caller that found the pool empty; nil if there is none.
func (p *Provider) reclaimPrepared() *session {
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	for i, pr := range p.prep {
		if !pr.done {
			continue
		}
		p.prep = slices.Delete(p.prep, i, i+1)
		if err := p.endOperation(pr.s); err != nil {
			p.pool.discard(pr.s)
			return nil
		}
		return pr.s
	}
	return nil
}

// cancelPrepared ends pr's operation, if C_SignInit succeeded, and gives
// its session back. pr must be ready.
func (p *Provider) cancelPrepared(pr *prepared) {
	if pr.s == nil {
		return
	}
	p.pool.put(pr.s, p.endOperation(pr.s))
}

// endOperation ends the sign operation active on s with C_SignFinal, whose
// tag is thrown away. A session that cannot end it is reported broken.
func (p *Provider) endOperation(s *session) error {
	if _, err := p.ctx.SignFinal(s.h); err != nil {
		return p11.Error(p11.CKR_SESSION_CLOSED)
	}
	return nil
}
