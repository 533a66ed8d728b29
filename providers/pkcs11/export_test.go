//go:build cgo

package pkcs11

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// SetStaleAfter shortens how long a key's session copy is used
// unchecked, for the test's duration.
func SetStaleAfter(t testing.TB, d time.Duration) {
	old := staleAfter
	staleAfter = d
	t.Cleanup(func() { staleAfter = old })
}

// SetStaleClaim changes how old an uncommitted rotation claim must be to
// be taken for stale, for the test's duration.
func SetStaleClaim(t testing.TB, d time.Duration) {
	old := staleClaim
	staleClaim = d
	t.Cleanup(func() { staleClaim = old })
}

// LoginAttempts is how many times the provider has called C_Login.
func LoginAttempts(p *Provider) int64 { return p.logins.Load() }

// EmptyKeyReads makes every key lookup read the key's attributes as
// SoftHSM2 does for an object whose file vanished mid-call: key type 0
// and every boolean false. before, if not nil, runs first, as the token
// goes away.
func EmptyKeyReads(t testing.TB, before func()) {
	keyAttributesRead = func(attrs []*p11.Attribute) {
		if before != nil {
			before()
		}
		for _, a := range attrs {
			if a.Type != p11.CKA_LABEL && a.Type != p11.CKA_ID {
				a.Value = make([]byte, len(a.Value))
			}
		}
	}
	t.Cleanup(func() { keyAttributesRead = nil })
}

// NoKeyReadHook undoes EmptyKeyReads.
func NoKeyReadHook() { keyAttributesRead = nil }

// ForgetKeys drops every key's handle and session copy, as a new login or
// a stale handle does, while other goroutines may be using them.
func ForgetKeys(p *Provider) { p.invalidateAll(false) }

// CopyAttempts is how many times the provider has called C_CopyObject.
func CopyAttempts(p *Provider) int64 { return p.cache.copies.attempts.Load() }

// CachedKeys lists the references the provider's cache holds keys under.
func CachedKeys(p *Provider) []string {
	p.cache.mu.Lock()
	defer p.cache.mu.Unlock()
	return slices.Sorted(maps.Keys(p.cache.keys))
}

// CopiesPay is copiesPay, for a test of the default.
var CopiesPay = copiesPay

// StaleAfter is how long a key's session copy is used unchecked.
var StaleAfter = staleAfter

// HoldKey takes the mutex of the key cached under ref, as a call on it
// waiting for the token does, until the returned func is called.
func HoldKey(t testing.TB, p *Provider, ref string) (release func()) {
	p.cache.mu.Lock()
	k := p.cache.keys[ref]
	p.cache.mu.Unlock()
	if k == nil {
		t.Fatalf("no key cached under %q", ref)
	}
	k.mu.Lock()
	return k.mu.Unlock
}

// TakeSession takes a session from p's pool, as a long call does, until
// the returned func is called.
func TakeSession(t testing.TB, p *Provider) (release func()) {
	s, err := p.pool.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return func() { p.pool.put(s, nil) }
}
