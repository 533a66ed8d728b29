//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// copiesRig is an agent on a token whose key "k" the tests change past
// the agent.
type copiesRig struct {
	p      *pkcs11.Provider
	tok    *softhsm.Token
	c      *client.Client
	d      *directToken
	secret []byte
}

func newCopiesRig(t *testing.T, tweak func(*pkcs11.Config)) *copiesRig {
	t.Helper()
	p, tok := newToken(t, tweak)
	ctx := context.Background()
	r := &copiesRig{p: p, tok: tok, secret: []byte("session-copy-key"), d: direct(t, tok)}
	if _, err := p.ImportKey(ctx, "k", r.secret); err != nil {
		t.Fatal(err)
	}
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r.c = c
	return r
}

// mac checks a MAC and a VerifyMAC of k against the reference.
func (r *copiesRig) mac(t *testing.T, what string) {
	t.Helper()
	ctx := context.Background()
	want := reference(providers.SHA256, r.secret, []byte(what))
	tag, err := r.c.MAC(ctx, "k", client.SHA256, []byte(what))
	if err != nil || !bytes.Equal(tag, want) {
		t.Fatalf("%s: MAC %x %v, want %x", what, tag, err, want)
	}
	if err := r.c.VerifyMAC(ctx, "k", client.SHA256, []byte(what), want); err != nil {
		t.Fatalf("%s: VerifyMAC: %v", what, err)
	}
}

func (r *copiesRig) copies() int { return r.p.Sessions().Copies }

// TestSessionCopies: a key in use gets one session copy, invisible to
// lookups and listings; a change to the original's CKA_SIGN made past the
// agent takes effect within staleAfter; deleting through the agent
// destroys the copy at once.
func TestSessionCopies(t *testing.T) {
	staleAfter := 20 * time.Millisecond
	pkcs11.SetStaleAfter(t, staleAfter)
	r := newCopiesRig(t, nil)
	ctx := context.Background()
	for range 3 {
		r.mac(t, "first")
	}
	if n := r.copies(); n != 1 {
		t.Fatalf("%d session copies after using one key, want 1", n)
	}
	keys, err := r.c.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := countKey(keys, "k"); n != 1 {
		t.Errorf("key k listed %d times with a session copy, want once", n)
	}

	orig := r.d.find("k") // fails on more than one token object
	if err := r.d.ctx.SetAttributeValue(r.d.s, orig, []*p11.Attribute{p11.NewAttribute(p11.CKA_SIGN, false)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * staleAfter)
	if _, err := r.c.MAC(ctx, "k", client.SHA256, []byte("refused")); err == nil {
		t.Error("MAC still signs with a key whose CKA_SIGN was turned off")
	}
	if err := r.d.ctx.SetAttributeValue(r.d.s, orig, []*p11.Attribute{p11.NewAttribute(p11.CKA_SIGN, true)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * staleAfter)
	r.mac(t, "allowed again")
	if n := r.copies(); n != 1 {
		t.Errorf("%d session copies after the original changed twice, want 1", n)
	}

	if err := r.c.DeleteKey(ctx, "hsm", "k"); err != nil {
		t.Fatal(err)
	}
	if n := r.copies(); n != 0 {
		t.Errorf("%d session copies after deleting the key, want 0", n)
	}
	if _, err := r.c.MAC(ctx, "k", client.SHA256, nil); !errors.Is(err, client.ErrKeyNotFound) {
		t.Errorf("MAC right after deleting through the agent: %v, want ErrKeyNotFound", err)
	}
}

func countKey(keys []client.KeyInfo, name string) int {
	n := 0
	for _, k := range keys {
		if k.Name == name {
			n++
		}
	}
	return n
}

// TestNoSessionCopies: keys the token may not copy (CKA_COPYABLE false),
// even with copies forced on, and every key with copies turned off, are
// used as they are.
func TestNoSessionCopies(t *testing.T) {
	t.Run("not copyable", func(t *testing.T) {
		r := newCopiesRig(t, func(c *pkcs11.Config) { c.KeyCopies = pkcs11.CopiesOn })
		secret := []byte("a key that stays put")
		if _, err := r.d.ctx.CreateObject(r.d.s, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_SENSITIVE, true),
			p11.NewAttribute(p11.CKA_SIGN, true),
			p11.NewAttribute(p11.CKA_VERIFY, true),
			p11.NewAttribute(p11.CKA_COPYABLE, false),
			p11.NewAttribute(p11.CKA_LABEL, "fixed"),
			p11.NewAttribute(p11.CKA_VALUE, append(secret, make([]byte, 64-len(secret))...)),
		}); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			tag, err := r.c.MAC(context.Background(), "fixed", client.SHA256, []byte("m"))
			if err != nil || !bytes.Equal(tag, reference(providers.SHA256, secret, []byte("m"))) {
				t.Fatalf("MAC with an uncopyable key: %x %v", tag, err)
			}
		}
		if n := r.copies(); n != 0 {
			t.Errorf("%d session copies of an uncopyable key", n)
		}
		if n := pkcs11.CopyAttempts(r.p); n != 0 {
			t.Errorf("C_CopyObject asked %d times of an uncopyable key: the agent must not count on the token to refuse", n)
		}
	})
	t.Run("session_key_copies=false", func(t *testing.T) {
		r := newCopiesRig(t, func(c *pkcs11.Config) { c.KeyCopies = pkcs11.CopiesOff })
		for range 3 {
			r.mac(t, "uncopied")
		}
		if n := r.copies(); n != 0 {
			t.Errorf("%d session copies with copies turned off", n)
		}
	})
}

// TestCopyDroppedInUse: a key's session copy is destroyed (a new login,
// a stale handle, the original changed) while other goroutines sign with
// it. SoftHSM2 checks the object is valid and then reads CKA_SIGN and the
// key type, which destroying it on another thread empties: the token then
// refuses the key. Every MAC must still succeed with the right tag, never
// fail with ErrUnsupportedAlgorithm.
func TestCopyDroppedInUse(t *testing.T) {
	p, _ := newToken(t, nil)
	ctx := context.Background()
	secret := []byte("dropped copy key")
	if _, err := p.ImportKey(ctx, "a", secret); err != nil {
		t.Fatal(err)
	}
	k, err := p.Key(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("m")
	want := reference(providers.SHA256, secret, msg)
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				tag, err := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, msg, nil)
				if err == nil && !bytes.Equal(tag, want) {
					err = errors.New("wrong tag")
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 3000 {
		pkcs11.ForgetKeys(p)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a MAC while copies were dropped: %v", err)
	}
}
