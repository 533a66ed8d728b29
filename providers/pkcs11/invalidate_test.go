//go:build cgo

package pkcs11_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// sum computes one MAC through key, for tests that hold a key across a
// change.
func sum(t *testing.T, key providers.Key) error {
	t.Helper()
	_, err := key.(providers.OneShot).SumMAC(context.Background(), providers.SHA256, []byte("m"), nil)
	return err
}

// TestDeleteVersionedDropsEveryCopy: deleting a versioned key drops the
// session copy of every version's object, also one cached under a URI
// (pkcs11:object=v@2) that no name of the key matches, so that the key
// stops signing when the delete returns.
func TestDeleteVersionedDropsEveryCopy(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.KeyCopies = pkcs11.CopiesOn })
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "v", []byte("version one key!")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RotateKey(ctx, "v", []byte("version two key!"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RotateKey(ctx, "v", []byte("version 3 of key"), 0); err != nil {
		t.Fatal(err)
	}
	var held []providers.Key
	for _, ref := range []string{"pkcs11:object=v@2", "pkcs11:object=v@3", "v"} {
		k, err := p.Key(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := sum(t, k); err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		held = append(held, k)
	}
	if n := p.Sessions().Copies; n != 3 {
		t.Fatalf("copies before the delete: %d, want 3", n)
	}
	if err := p.DeleteKey(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if n := p.Sessions().Copies; n != 0 {
		t.Errorf("copies after the delete: %d, want 0 (cached %q)", n, pkcs11.CachedKeys(p))
	}
	for i, k := range held {
		if err := sum(t, k); !errors.Is(err, providers.ErrKeyNotFound) {
			t.Errorf("%s after the delete: %v, want %v", k.Name(), err, providers.ErrKeyNotFound)
		}
		if i < 2 {
			if _, err := p.Key(ctx, k.Name()); !errors.Is(err, providers.ErrKeyNotFound) {
				t.Errorf("lookup of %s after the delete: %v, want %v", k.Name(), err, providers.ErrKeyNotFound)
			}
		}
	}
}

// TestEvictedKeyNotCopied: a key the cache dropped (the name rotated to a
// new version) but a caller still holds is used through the token object
// and never copied again: nothing could find such a copy to destroy it.
func TestEvictedKeyNotCopied(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.KeyCopies = pkcs11.CopiesOn })
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "r", []byte("rotated key here")); err != nil {
		t.Fatal(err)
	}
	old, err := p.Key(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	if err := sum(t, old); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RotateKey(ctx, "r", nil, 0); err != nil {
		t.Fatal(err)
	}
	attempts := pkcs11.CopyAttempts(p)
	for range 3 {
		if err := sum(t, old); err != nil {
			t.Fatal(err)
		}
	}
	if n := pkcs11.CopyAttempts(p) - attempts; n != 0 {
		t.Errorf("the evicted key was copied %d times", n)
	}
	if n := p.Sessions().Copies; n != 0 {
		t.Errorf("copies held after using the evicted key: %d, want 0", n)
	}
}

// TestInvalidateWaitsForNoKey: while a call on key "a" holds it (waiting
// for a stalled token), dropping and looking up another key must not wait
// for "a". The bound only tells a deadlock from a pass; it is no speed
// goal.
func TestInvalidateWaitsForNoKey(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.KeyCopies = pkcs11.CopiesOn })
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		if _, err := p.ImportKey(ctx, name, []byte("sixteen byte key")); err != nil {
			t.Fatal(err)
		}
		k, err := p.Key(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := sum(t, k); err != nil {
			t.Fatal(err)
		}
	}
	release := sync.OnceFunc(pkcs11.HoldKey(t, p, "a"))
	defer release()
	done := make(chan error, 1)
	go func() {
		// Rotating drops "b" from the cache; the lookup then caches the
		// new version.
		if _, err := p.RotateKey(ctx, "b", nil, 0); err != nil {
			done <- err
			return
		}
		k, err := p.Key(ctx, "b")
		if err == nil {
			err = sum(t, k)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		release()
		<-done
		t.Fatal("rotating and using key b waited for the call holding key a")
	}
}

// TestRenamedByAnotherProgram: another program relabels a key the agent
// uses through a session copy; the old name stops working at the next
// check of the original (within staleAfter), and the new name finds it.
func TestRenamedByAnotherProgram(t *testing.T) {
	pkcs11.SetStaleAfter(t, 20*time.Millisecond)
	r := newCopiesRig(t, func(c *pkcs11.Config) { c.KeyCopies = pkcs11.CopiesOn })
	r.mac(t, "before")
	orig := r.d.find("k")
	if err := r.d.ctx.SetAttributeValue(r.d.s, orig, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, "renamed")}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // past staleAfter
	ctx := context.Background()
	if _, err := r.c.MAC(ctx, "k", client.SHA256, []byte("x")); err == nil {
		t.Errorf("MAC by the old name succeeds after another program renamed the object")
	}
	if r.copies() != 0 {
		t.Errorf("the renamed key's copy is kept (copies %d)", r.copies())
	}
	if _, err := r.c.MAC(ctx, "renamed", client.SHA256, []byte("x")); err != nil {
		t.Errorf("MAC by the new name: %v", err)
	}
}
