//go:build cgo

package pkcs11

import (
	"bytes"
	"strings"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// A key in use may get a session copy: C_CopyObject with CKA_TOKEN false,
// a session object the token holds in memory, which operations then use.
// SoftHSM2 checks a token object's file for changes by other programs at
// every C_SignInit; on a session object the call costs half as much
// (about 10 µs against 20 µs), and a one-shot is mostly that call. A
// hardware or network HSM has no file to check: there a copy saves
// nothing, costs a call and an object in the token, and opens the window
// below. So by default (CopiesAuto) only SoftHSM2's keys are copied; the
// reasoning and measurements are in docs/pkcs11.md.
//
// The copy keeps the original's attributes, CKA_SENSITIVE and
// CKA_EXTRACTABLE among them (PKCS#11 lets a copy only tighten those), so
// its value can no more leave the token than the original's. A key is
// copied only when its CKA_COPYABLE reads true: the agent does not count
// on the token to refuse.
//
// A copy does not notice what other programs do to the original. So the
// first use more than staleAfter after the last check asks the token
// whether the original is still there with the same rights, label and ID
// (C_GetAttributeValue, checkedAttributes); if not, the copy is destroyed
// and the key looked up again. What the agent itself changes drops the copies concerned at
// once (objectCache). A copy dropped while calls use its handle is
// destroyed by the last of them (copyUse).

// staleAfter bounds how long the agent may go on using a session copy of
// a key without asking the token whether the original is still there: how
// long a key another program deleted or restricted keeps working. A
// variable for tests.
var staleAfter = 200 * time.Millisecond

// softHSMManufacturer is SoftHSM2's CK_TOKEN_INFO manufacturerID, which
// CopiesAuto copies keys for.
const softHSMManufacturer = "SoftHSM project"

// copiesPay reports whether session copies are worth their window on a
// token by this manufacturer: only where a token object costs more to
// use than a session object, as SoftHSM2's does.
func copiesPay(manufacturerID string) bool {
	return strings.TrimRight(manufacturerID, " \x00") == softHSMManufacturer
}

// checkedAttributes are what a copy must still share with its original:
// its rights (CKA_COPYABLE among them, so a key made uncopyable stops
// being used through a copy), and the label and ID it is found by, so
// that a key another program renamed stops answering to its old name.
func checkedAttributes() []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_SIGN, nil),
		p11.NewAttribute(p11.CKA_VERIFY, nil),
		p11.NewAttribute(p11.CKA_COPYABLE, nil),
		p11.NewAttribute(p11.CKA_LABEL, nil),
		p11.NewAttribute(p11.CKA_ID, nil),
	}
}

// keyCopy is a session copy: its handle, the copies' session it lives in
// (copyStore.epoch), and its original's checkedAttributes when made.
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
// 0 when it cannot or may not.
func (p *Provider) copyKey(s *session, h p11.ObjectHandle) keyCopy {
	st := &p.cache.copies
	if !st.on.Load() || !copyable(p.ctx, s, h) {
		return keyCopy{}
	}
	attrs, err := checkedValues(p.ctx, s, h)
	if err != nil {
		return keyCopy{}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for range 2 {
		if !st.open {
			cs, err := p.ctx.OpenSession(p.slot, p11.CKF_SERIAL_SESSION)
			if err != nil {
				return keyCopy{}
			}
			st.sess, st.open = cs, true
		}
		st.attempts.Add(1)
		c, err := p.ctx.CopyObject(st.sess, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_TOKEN, false)})
		switch {
		case err == nil:
			st.held.Add(1)
			return keyCopy{h: c, epoch: st.epoch.Load(), attrs: attrs, use: &copyUse{}}
		case sessionBroken(err):
			st.closeLocked(p.ctx) // and once more on a new session
		case rv(err) == p11.CKR_FUNCTION_NOT_SUPPORTED:
			st.on.Store(false)
			return keyCopy{}
		default: // CKR_ACTION_PROHIBITED, or out of memory
			return keyCopy{}
		}
	}
	return keyCopy{}
}

// copyable reports whether h's CKA_COPYABLE reads true. A token that
// cannot say (one older than PKCS#11 2.40) is not trusted to refuse.
func copyable(ctx *p11.Ctx, s *session, h p11.ObjectHandle) bool {
	got, err := ctx.GetAttributeValue(s.h, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_COPYABLE, nil)})
	return err == nil && len(got) == 1 && len(got[0].Value) > 0 && got[0].Value[0] != 0
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
	st := &p.cache.copies
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.open && c.epoch == st.epoch.Load() {
		p.ctx.DestroyObject(st.sess, c.h)
		st.held.Add(-1)
	}
}

// usableCopy returns the key's copy if it may be used now, checking the
// original when the last check is older than staleAfter. It drops a copy
// whose original is gone or changed, or that went with its session. k.mu
// is held.
func (k *key) usableCopy(s *session) (p11.ObjectHandle, error) {
	if k.copy.h == 0 {
		return 0, nil
	}
	if k.gen == k.p.gen.Load() && k.copy.epoch == k.p.cache.copies.epoch.Load() {
		if time.Since(k.checked) < staleAfter {
			return k.copy.h, nil
		}
		// The window runs from before the read: the token may change
		// the original while it answers.
		asked := time.Now()
		attrs, err := checkedValues(k.p.ctx, s, k.handle)
		switch {
		case err == nil && bytes.Equal(attrs, k.copy.attrs):
			k.checked = asked
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
