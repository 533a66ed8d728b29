//go:build cgo

package pkcs11

import (
	"bytes"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// A key in use gets a session copy: C_CopyObject with CKA_TOKEN false, a
// session object the token holds in memory. SoftHSM2 checks a token
// object's file for changes by other programs at every C_SignInit; on a
// session object the call costs half as much (about 10 µs against 20 µs),
// and a one-shot is mostly that call. Operations use the copy.
//
// The copy keeps the original's attributes, CKA_SENSITIVE and
// CKA_EXTRACTABLE among them (PKCS#11 lets a copy only tighten those), so
// its value can no more leave the token than the original's.
//
// A copy does not notice what other programs do to the original. So the
// first use more than staleAfter after the last check asks the token
// whether the original is still there and may still sign and verify
// (C_GetAttributeValue); if not, the copy is destroyed and the key looked
// up again. Deleting any key through the agent drops every copy at once,
// as a new login does. A copy dropped while calls use its handle is
// destroyed by the last of them (copyUse).
//
// Copies are made in a session of their own, outside the pool: a session
// object dies with the session that made it, and pool sessions are closed
// when they break. Tokens that cannot copy keys, and keys that may not be
// copied (CKA_COPYABLE false), are used as they are.

// staleAfter bounds how long the agent may go on using a session copy of
// a key without asking the token whether the original is still there. A
// variable for tests.
var staleAfter = 200 * time.Millisecond

// checkedAttributes are what a copy must still share with its original.
func checkedAttributes() []*p11.Attribute {
	return []*p11.Attribute{p11.NewAttribute(p11.CKA_SIGN, nil), p11.NewAttribute(p11.CKA_VERIFY, nil)}
}

// keyCopy is a session copy: its handle, the copies' session it lives in
// (see copyEpoch), and its original's checkedAttributes when made.
type keyCopy struct {
	h     p11.ObjectHandle
	epoch uint64
	attrs []byte
	use   *copyUse
}

// copyUse counts the calls using a copy's handle (objectHandle to done),
// and whether it was dropped meanwhile, to be destroyed by the last of
// them. Guarded by the key's mu.
type copyUse struct {
	users   int
	dropped bool
}

// copyKey makes a session copy of the token object h, read through s; h
// 0 when it cannot.
func (p *Provider) copyKey(s *session, h p11.ObjectHandle) keyCopy {
	if p.noCopies.Load() {
		return keyCopy{}
	}
	attrs, err := checkedValues(p.ctx, s, h)
	if err != nil {
		return keyCopy{}
	}
	p.copyMu.Lock()
	defer p.copyMu.Unlock()
	for range 2 {
		if !p.copyOpen {
			cs, err := p.ctx.OpenSession(p.slot, p11.CKF_SERIAL_SESSION)
			if err != nil {
				return keyCopy{}
			}
			p.copySess, p.copyOpen = cs, true
		}
		c, err := p.ctx.CopyObject(p.copySess, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_TOKEN, false)})
		switch {
		case err == nil:
			p.copies.Add(1)
			return keyCopy{h: c, epoch: p.copyEpoch, attrs: attrs, use: &copyUse{}}
		case sessionBroken(err):
			p.closeCopiesLocked() // and once more on a new session
		case rv(err) == p11.CKR_FUNCTION_NOT_SUPPORTED:
			p.noCopies.Store(true)
			return keyCopy{}
		default: // CKR_ACTION_PROHIBITED: not copyable; or out of memory
			return keyCopy{}
		}
	}
	return keyCopy{}
}

// checkedValues reads h's checkedAttributes, concatenated.
func checkedValues(ctx *p11.Ctx, s *session, h p11.ObjectHandle) ([]byte, error) {
	got, err := ctx.GetAttributeValue(s.h, h, checkedAttributes())
	if err != nil {
		return nil, err
	}
	var b []byte
	for _, a := range got {
		b = append(append(b, byte(len(a.Value))), a.Value...)
	}
	return b, nil
}

// destroyCopy destroys a session copy. It may already be gone (with a
// logout); either way it is not used again. One made in an earlier
// copies' session went with it, and its handle may now name another copy.
func (p *Provider) destroyCopy(c keyCopy) {
	p.copyMu.Lock()
	defer p.copyMu.Unlock()
	if p.copyOpen && c.epoch == p.copyEpoch {
		p.ctx.DestroyObject(p.copySess, c.h)
		p.copies.Add(-1)
	}
}

// closeCopiesLocked closes the copies' session, which destroys them all.
func (p *Provider) closeCopiesLocked() {
	if p.copyOpen {
		p.ctx.CloseSession(p.copySess)
		p.copyOpen = false
		p.copyEpoch++
		p.copies.Store(0)
	}
}

// forgetAll drops every key's handle and copy, when handles went stale.
// The caller holds enter().
func (p *Provider) forgetAll() {
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	for _, k := range p.keys {
		k.forget()
	}
}

// forgetObject drops the handle and copy of the key named ref and of any
// other name that reached the token object h, just deleted (0: none was).
// Other keys' copies stay: a token may end the operations running on a
// key it destroys. The caller holds enter().
func (p *Provider) forgetObject(ref string, h p11.ObjectHandle) {
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	for name, k := range p.keys {
		k.mu.Lock()
		if name == ref || (h != 0 && k.gen != 0 && k.handle == h) {
			k.forgetLocked()
		}
		k.mu.Unlock()
	}
}

// usableCopy returns the key's copy if it may be used now, checking the
// original when the last check is older than staleAfter. It drops a copy
// whose original is gone or changed. k.mu is held.
func (k *key) usableCopy(s *session) (p11.ObjectHandle, error) {
	if k.copy.h == 0 {
		return 0, nil
	}
	if k.gen == k.p.gen.Load() {
		if time.Since(k.checked) < staleAfter {
			return k.copy.h, nil
		}
		attrs, err := checkedValues(k.p.ctx, s, k.handle)
		switch {
		case err == nil && bytes.Equal(attrs, k.copy.attrs):
			k.checked = time.Now()
			return k.copy.h, nil
		case err != nil && !handleStale(err):
			return 0, err // the session or login, not the key: recovered and retried
		}
	}
	k.forgetLocked()
	return 0, nil
}

// dropCopy destroys the key's copy, if any, or leaves that to the last
// call still using it. k.mu is held.
func (k *key) dropCopy() {
	if k.copy.h != 0 {
		if k.copy.use.users > 0 {
			k.copy.use.dropped = true
		} else {
			k.p.destroyCopy(k.copy)
		}
		k.copy = keyCopy{}
	}
}

// holdCopyLocked counts a use of the key's copy until the returned func is
// called. k.mu is held.
func (k *key) holdCopyLocked() func() {
	c := k.copy
	c.use.users++
	return func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		c.use.users--
		if c.use.users == 0 && c.use.dropped {
			k.p.destroyCopy(c)
		}
	}
}
