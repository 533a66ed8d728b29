//go:build cgo

package pkcs11_test

import (
	"testing"

	p11 "github.com/miekg/pkcs11"
)

// BenchmarkFastPaths measures, with miekg/pkcs11 alone on one session,
// what each of the provider's caches trades (docs/pkcs11.md): a one-shot
// MAC on the token object as found once (the handle cache), on a session
// copy of it (copies), and after looking the key up again (no cache);
// and the calls a copy costs: making it, and checking its original.
func BenchmarkFastPaths(b *testing.B) {
	r := newBenchRig(b)
	d, msg := r.d, make([]byte, 64)
	copied, err := d.ctx.CopyObject(d.s, r.key, []*p11.Attribute{p11.NewAttribute(p11.CKA_TOKEN, false)})
	if err != nil {
		b.Fatal(err)
	}
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_SHA256_HMAC, nil)}
	sign := func(b *testing.B, h p11.ObjectHandle) {
		if err := d.ctx.SignInit(d.s, mech, h); err != nil {
			b.Fatal(err)
		}
		if _, err := d.ctx.Sign(d.s, msg); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("mac/token-object", func(b *testing.B) {
		for b.Loop() {
			sign(b, r.key)
		}
	})
	b.Run("mac/session-copy", func(b *testing.B) {
		for b.Loop() {
			sign(b, copied)
		}
	})
	b.Run("mac/search-then-token-object", func(b *testing.B) {
		for b.Loop() {
			sign(b, d.find("bench"))
		}
	})
	b.Run("copy-object", func(b *testing.B) {
		for b.Loop() {
			h, err := d.ctx.CopyObject(d.s, r.key, []*p11.Attribute{p11.NewAttribute(p11.CKA_TOKEN, false)})
			if err != nil {
				b.Fatal(err)
			}
			d.ctx.DestroyObject(d.s, h)
		}
	})
	b.Run("check-original", func(b *testing.B) {
		for b.Loop() {
			if _, err := d.ctx.GetAttributeValue(d.s, r.key, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_SIGN, nil), p11.NewAttribute(p11.CKA_VERIFY, nil)}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
