//go:build cgo

package pkcs11_test

import (
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

// directToken reaches the token past the provider, as another program or
// an administrator would, to set things up or break them.
type directToken struct {
	t    testing.TB
	ctx  *p11.Ctx
	slot uint
	s    p11.SessionHandle
}

// direct opens a session of its own on tok. The module is shared with the
// provider, so it is never finalized here.
func direct(t testing.TB, tok *softhsm.Token) *directToken {
	t.Helper()
	ctx := p11.New(softhsm.Module)
	if err := ctx.Initialize(); err != nil && !strings.Contains(err.Error(), "ALREADY_INITIALIZED") {
		t.Fatal(err)
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		ti, err := ctx.GetTokenInfo(s)
		if err == nil && strings.TrimRight(ti.Label, " ") == tok.Label {
			h, err := ctx.OpenSession(s, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
			if err != nil {
				t.Fatal(err)
			}
			if err := ctx.Login(h, p11.CKU_USER, tok.PIN); err != nil && !strings.Contains(err.Error(), "ALREADY_LOGGED_IN") {
				t.Fatal(err)
			}
			return &directToken{t: t, ctx: ctx, slot: s, s: h}
		}
	}
	t.Fatalf("token %q not found", tok.Label)
	return nil
}

func (d *directToken) find(label string) p11.ObjectHandle {
	d.t.Helper()
	if err := d.ctx.FindObjectsInit(d.s, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, label), p11.NewAttribute(p11.CKA_TOKEN, true)}); err != nil {
		d.t.Fatal(err)
	}
	hs, _, err := d.ctx.FindObjects(d.s, 1)
	d.ctx.FindObjectsFinal(d.s)
	if err != nil || len(hs) != 1 {
		d.t.Fatalf("find %q: %v %v", label, hs, err)
	}
	return hs[0]
}
