//go:build cgo

package pkcs11_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// TestTokenReturnsWithAnotherPIN: the token goes away and a token of the
// same label comes back with another user PIN, as after an operator
// re-initialized it. A real HSM locks its user PIN after a few wrong
// tries, so recovery must not log in again and again with the PIN the
// token rejected: it tries that PIN once, stays down, and logs in as soon
// as the PIN file holds the new PIN.
func TestTokenReturnsWithAnotherPIN(t *testing.T) {
	var (
		mu  sync.Mutex
		pin []byte
	)
	p, tok := newToken(t, func(c *pkcs11.Config) {
		c.ReadPIN = func() ([]byte, error) {
			mu.Lock()
			defer mu.Unlock()
			return append([]byte(nil), pin...), nil
		}
	})
	mu.Lock()
	pin = []byte(tok.PIN)
	mu.Unlock()
	ctx := context.Background()
	if err := p.Health(ctx); err != nil {
		t.Fatal(err)
	}

	dir := softhsm.TokenDir()
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		os.RemoveAll(dir)
		os.Rename(dir+".away", dir)
	}()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	const newPIN = "98765"
	if out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", tok.Label,
		"--so-pin", tok.SOPIN, "--pin", newPIN).CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v: %s", err, out)
	}
	// The provider finds out, and its recovery finds the new token.
	if err := p.Health(ctx); !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("Health with the token replaced: %v, want ErrUnavailable", err)
	}
	before := pkcs11.LoginAttempts(p)
	time.Sleep(4 * time.Second) // a recovery try every 2 s at most
	if n := pkcs11.LoginAttempts(p) - before; n > 1 {
		t.Errorf("recovery tried the rejected PIN %d times in 4 s; a real token would lock it", n)
	}
	if err := p.Health(ctx); !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("Health with the old PIN: %v, want ErrUnavailable", err)
	}

	// The operator puts the new PIN in place: service returns by itself.
	mu.Lock()
	pin = []byte(newPIN)
	mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := p.Health(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not serving 10 s after the new PIN: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPINChangedThenLoginLost: the user PIN is changed (C_SetPIN, as an
// operator's pkcs11-tool --change-pin does) and then the agent's login is
// lost (every session closed). Requests that find themselves logged out
// log in again, but never again with the PIN the token rejected: one
// wrong try, not one per request, and service returns once the PIN file
// holds the new PIN.
func TestPINChangedThenLoginLost(t *testing.T) {
	var (
		mu  sync.Mutex
		pin = []byte(softhsm.UserPIN)
	)
	r := newRecoveryRigWith(t, func(c *pkcs11.Config) {
		c.ReadPIN = func() ([]byte, error) {
			mu.Lock()
			defer mu.Unlock()
			return append([]byte(nil), pin...), nil
		}
	})
	ctx := context.Background()
	if err := r.d.ctx.SetPIN(r.d.s, softhsm.UserPIN, "test-new-pin-24680"); err != nil {
		t.Fatal(err)
	}
	if err := r.d.ctx.CloseAllSessions(r.d.slot); err != nil {
		t.Fatal(err)
	}
	before := pkcs11.LoginAttempts(r.p)
	for range 20 {
		if _, err := r.c.MAC(ctx, "a", client.SHA256, []byte("x")); err == nil {
			t.Fatal("a MAC succeeded with the agent logged out and its PIN wrong")
		}
	}
	if n := pkcs11.LoginAttempts(r.p) - before; n > 1 {
		t.Errorf("20 requests tried the rejected PIN %d times; a real token would lock it", n)
	}
	mu.Lock()
	pin = []byte("test-new-pin-24680")
	mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := r.c.MAC(ctx, "a", client.SHA256, []byte("x"))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not serving 10 s after the PIN file got the new PIN: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
