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
// each call over the network; VerifyMAC is the same with C_VerifyInit. A
// prepared session has had the init call run for a key, mechanism and
// operation while the agent waited for the client's next request; that
// request is then C_Sign or C_Verify alone.
//
// A prepared operation has the key loaded, so a key deleted from the token
// by another program could still be used through it. It is used only
// within staleAfter of the token's last word on the key (its init call, or
// the last check of the session copy it was made on), dropped when the
// agent deletes a key or logs in again, and never kept past Close.

// staleAfter bounds how long the agent may go on using what it holds of a
// key without asking the token whether the key is still there: a prepared
// session after its init call, a session copy after its last check. A
// variable for tests.
var staleAfter = 200 * time.Millisecond

// operation is what a session is prepared for.
type operation struct {
	k      *key
	mech   uint
	verify bool // C_VerifyInit, else C_SignInit
}

// prepared is a session on which the init call for op runs or has run.
// ready is closed, and done set under prepMu, when it has; s is nil then
// if the call failed. Whoever removes it from Provider.prep owns it.
type prepared struct {
	op    operation
	gen   uint64 // the login, and
	epoch uint64 // the deletions it was prepared under
	at    time.Time
	s     *session
	ready chan struct{}
	done  bool
}

// Prepare readies a session for a one-shot on k with alg: it takes a free
// session, if the pool has one now and fewer than the configured number
// are prepared, and runs C_SignInit (or C_VerifyInit) on it. A one-shot
// that comes meanwhile, on another goroutine, waits for it rather than
// start its own.
func (k *key) Prepare(_ context.Context, alg providers.Algorithm, verify bool) {
	p := k.p
	mech, ok := p.mech[alg]
	if !ok || !k.algs[alg] || p.cfg.PreparedSessions == 0 {
		return
	}
	if p.enter() != nil {
		return
	}
	defer p.leave()
	pr := p.reservePrepared(operation{k: k, mech: mech, verify: verify})
	if pr == nil {
		return
	}
	h, checked, err := k.checkedHandle(pr.s)
	if err == nil {
		m := []*p11.Mechanism{p11.NewMechanism(mech, nil)}
		if verify {
			err = p.ctx.VerifyInit(pr.s.h, m, h)
		} else {
			err = p.ctx.SignInit(pr.s.h, m, h)
		}
	}
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	if err != nil {
		p.pool.put(pr.s, err)
		pr.s = nil
		p.removeLocked(pr) // unless a one-shot has claimed it
	} else if checked.Before(pr.at) {
		// On a session copy, the key was last confirmed at its check:
		// the prepared operation's age counts from then.
		pr.at = checked
	}
	pr.done = true
	close(pr.ready)
}

// reservePrepared lists a prepared operation for op, not ready yet, with a
// free session; nil if there is no room or no free session.
func (p *Provider) reservePrepared(op operation) *prepared {
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
	pr := &prepared{op: op, gen: p.gen.Load(), epoch: p.prepEpoch.Load(),
		at: time.Now(), ready: make(chan struct{}), s: s}
	p.prep = append(p.prep, pr)
	if !p.reaping {
		p.reaping = true
		time.AfterFunc(staleAfter, p.reapPrepared)
	}
	return pr
}

// signPrepared signs data on a session prepared for it, if there is one.
// ok false means none was used: the caller signs from the start, with the
// retries that brings.
func (k *key) signPrepared(ctx context.Context, mech uint, data []byte) (tag []byte, ok bool) {
	k.p.usePrepared(ctx, operation{k: k, mech: mech}, func(s *session) error {
		var err error
		tag, err = k.p.ctx.Sign(s.h, data)
		ok = err == nil
		return err
	})
	return tag, ok
}

// verifyPrepared verifies tag on a session prepared for it, if there is
// one, and returns the token's answer. ok false means none was used or it
// failed for another reason: the caller verifies from the start.
func (k *key) verifyPrepared(ctx context.Context, mech uint, data, tag []byte) (ok bool, err error) {
	k.p.usePrepared(ctx, operation{k: k, mech: mech, verify: true}, func(s *session) error {
		err = k.p.ctx.Verify(s.h, data, tag)
		ok = err == nil || signatureRejected(err)
		return err
	})
	return ok, err
}

// usePrepared runs call on a session prepared for op, if there is one,
// waiting for its init call if need be, and gives the session back.
func (p *Provider) usePrepared(ctx context.Context, op operation, call func(s *session) error) {
	if p.enter() != nil {
		return
	}
	defer p.leave()
	pr := p.claimPrepared(op)
	if pr == nil {
		return
	}
	select {
	case <-pr.ready:
	case <-ctx.Done():
		// Its session goes back once the init call is done.
		go func() {
			<-pr.ready
			if p.enter() == nil {
				p.cancelPrepared(pr)
				p.leave()
			}
		}()
		return
	}
	if !p.current(pr) { // a login or a deletion while it was readied
		p.cancelPrepared(pr)
		return
	}
	if pr.s == nil {
		return
	}
	err := call(pr.s)
	p.pool.put(pr.s, err)
	if err == nil || signatureRejected(err) {
		p.prepUsed.Add(1)
	}
}

// claimPrepared removes and returns an operation prepared or being
// prepared for op that may still be used, or nil.
func (p *Provider) claimPrepared(op operation) *prepared {
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	if len(p.prep) == 0 {
		return nil
	}
	p.dropExpiredLocked(time.Now())
	for i, pr := range p.prep {
		if pr.op == op && p.current(pr) {
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
		if p.current(pr) && now.Sub(pr.at) < staleAfter {
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
	time.AfterFunc(staleAfter, p.reapPrepared)
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
		if err := p.endOperation(pr); err != nil {
			p.pool.discard(pr.s)
			return nil
		}
		return pr.s
	}
	return nil
}

// cancelPrepared ends pr's operation, if its init call succeeded, and
// gives its session back. pr must be ready.
func (p *Provider) cancelPrepared(pr *prepared) {
	if pr.s == nil {
		return
	}
	p.pool.put(pr.s, p.endOperation(pr))
}

// endOperation ends the operation active on pr's session: C_SignFinal,
// whose tag is thrown away, or C_VerifyFinal with a one-byte tag, which
// the token refuses. A session that cannot end it is reported broken.
func (p *Provider) endOperation(pr *prepared) error {
	if p.pool.stale(pr.s) {
		return nil // gone with the module's re-initialization; put drops it
	}
	var err error
	if pr.op.verify {
		if err = p.ctx.VerifyFinal(pr.s.h, []byte{0}); signatureRejected(err) {
			err = nil
		}
	} else {
		_, err = p.ctx.SignFinal(pr.s.h)
	}
	if err != nil {
		return p11.Error(p11.CKR_SESSION_CLOSED)
	}
	return nil
}
