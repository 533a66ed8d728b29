//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// preparedKey is a token key seen as the agent sees it.
type preparedKey interface {
	providers.Key
	providers.OneShot
	providers.OneShotVerifier
	providers.Preparer
}

func preparedKeys(t *testing.T, p *pkcs11.Provider, secrets map[string][]byte) map[string]preparedKey {
	t.Helper()
	ctx := context.Background()
	keys := map[string]preparedKey{}
	for name, secret := range secrets {
		if _, err := p.ImportKey(ctx, name, secret); err != nil {
			t.Fatal(err)
		}
		k, err := p.Key(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		keys[name] = k.(preparedKey)
	}
	return keys
}

func sumMAC(t *testing.T, k preparedKey, alg providers.Algorithm, msg []byte) []byte {
	t.Helper()
	tag, err := k.SumMAC(context.Background(), alg, msg, nil)
	if err != nil {
		t.Fatalf("%s %s: %v", k.Name(), alg, err)
	}
	return tag
}

// An operation prepared for one key and algorithm signs only a one-shot
// on that key with that algorithm.
func TestPreparedSignsOnlyItsKeyAndAlgorithm(t *testing.T) {
	p, _ := newToken(t, nil)
	secrets := map[string][]byte{"a": []byte("prepared-key-a"), "b": []byte("prepared-key-b")}
	keys := preparedKeys(t, p, secrets)
	ctx := context.Background()
	msg := []byte("message")

	keys["a"].Prepare(ctx, providers.SHA256)
	if n := p.Prepared(); n != 1 {
		t.Fatalf("prepared after Prepare: %d, want 1", n)
	}
	for _, c := range []struct {
		key string
		alg providers.Algorithm
	}{{"b", providers.SHA256}, {"a", providers.SHA384}, {"b", providers.SHA384}} {
		if tag := sumMAC(t, keys[c.key], c.alg, msg); !bytes.Equal(tag, reference(c.alg, secrets[c.key], msg)) {
			t.Errorf("%s %s beside a prepared a/sha256: wrong tag", c.key, c.alg)
		}
		if n := p.Prepared(); n != 1 {
			t.Errorf("%s %s used the operation prepared for a/sha256", c.key, c.alg)
		}
	}
	if tag := sumMAC(t, keys["a"], providers.SHA256, msg); !bytes.Equal(tag, reference(providers.SHA256, secrets["a"], msg)) {
		t.Error("a/sha256 on its prepared operation: wrong tag")
	}
	if n := p.Prepared(); n != 0 {
		t.Errorf("prepared after the one-shot it was for: %d, want 0", n)
	}
	// The session went back ready for anything: a context streams on it.
	m, _ := keys["b"].NewMAC(ctx, providers.SHA256)
	big := bytes.Repeat([]byte("x"), 200<<10)
	m.Update(ctx, big)
	if err := m.Verify(ctx, reference(providers.SHA256, secrets["b"], big)); err != nil {
		t.Errorf("streaming after a prepared one-shot: %v", err)
	}
	if err := keys["a"].VerifyMAC(ctx, providers.SHA256, msg, reference(providers.SHA256, secrets["a"], msg)); err != nil {
		t.Errorf("VerifyMAC: %v", err)
	}
}

// Deleting a key through the agent cancels what was prepared at once,
// for every name of the key.
func TestPreparedDroppedOnDelete(t *testing.T) {
	p, _ := newToken(t, nil)
	keys := preparedKeys(t, p, map[string][]byte{"a": []byte("delete-me-a"), "b": []byte("keep-me-b")})
	ctx := context.Background()
	keys["a"].Prepare(ctx, providers.SHA256)
	keys["b"].Prepare(ctx, providers.SHA256)
	if err := p.DeleteKey(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if n := p.Prepared(); n != 0 {
		t.Errorf("prepared after a deletion: %d, want 0", n)
	}
	if _, err := keys["a"].SumMAC(ctx, providers.SHA256, []byte("m"), nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("deleted key: %v, want ErrKeyNotFound", err)
	}
	if got := p.Sessions(); got.InUse != 0 {
		t.Errorf("sessions in use after the deletion: %d", got.InUse)
	}
}

// Prepared operations expire and give their sessions back when the
// one-shots stop.
func TestPreparedExpire(t *testing.T) {
	maxAge := 20 * time.Millisecond
	pkcs11.SetPreparedMaxAge(t, maxAge)
	p, _ := newToken(t, nil)
	keys := preparedKeys(t, p, map[string][]byte{"a": []byte("expiring")})
	keys["a"].Prepare(context.Background(), providers.SHA256)
	deadline := time.Now().Add(5 * time.Second)
	for p.Prepared() > 0 && time.Now().Before(deadline) {
		time.Sleep(maxAge)
	}
	if n := p.Prepared(); n != 0 {
		t.Fatalf("still prepared long after it expired: %d", n)
	}
	if got := p.Sessions(); got.InUse != 0 {
		t.Errorf("sessions in use after expiry: %d", got.InUse)
	}
	if tag := sumMAC(t, keys["a"], providers.SHA256, nil); !bytes.Equal(tag, reference(providers.SHA256, []byte("expiring"), nil)) {
		t.Error("after expiry: wrong tag")
	}
}

// At most prepared_sessions are held, and a request that finds the pool
// empty takes one back rather than wait.
func TestPreparedBoundedAndReclaimed(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) {
		c.Sessions = 3
		c.PreparedSessions = 2
		c.SessionWait = 100 * time.Millisecond
		c.BufferBytes = 16
	})
	secret := []byte("bounded")
	keys := preparedKeys(t, p, map[string][]byte{"a": secret})
	ctx := context.Background()
	for range 5 {
		keys["a"].Prepare(ctx, providers.SHA256)
	}
	if n := p.Prepared(); n != 2 {
		t.Errorf("prepared after 5 calls with prepared_sessions=2: %d", n)
	}
	// Three streaming contexts hold every session: the two prepared
	// ones are taken back.
	big := bytes.Repeat([]byte("y"), 100)
	var held []providers.MAC
	for i := range 3 {
		m, _ := keys["a"].NewMAC(ctx, providers.SHA256)
		if err := m.Update(ctx, big); err != nil {
			t.Fatalf("context %d beside prepared sessions: %v", i, err)
		}
		held = append(held, m)
		// A prepared session can be taken back: the pool is busy only
		// when none is left.
		if busy, want := p.Busy(), i == 2; busy != want {
			t.Errorf("Busy with %d contexts holding sessions: %v, want %v", i+1, busy, want)
		}
	}
	for _, m := range held {
		if err := m.Verify(ctx, reference(providers.SHA256, secret, big)); err != nil {
			t.Error(err)
		}
	}
}

// Many goroutines preparing and signing with several keys and algorithms
// always get each key's own tags (run with -race).
func TestPreparedConcurrent(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.Sessions = 6 })
	secrets := map[string][]byte{}
	for i := range 3 {
		secrets[fmt.Sprintf("k%d", i)] = []byte(fmt.Sprintf("concurrent-key-%d", i))
	}
	keys := preparedKeys(t, p, secrets)
	algs := []providers.Algorithm{providers.SHA256, providers.SHA512}
	ctx := context.Background()
	// A one-shot whose caller gave up may still sign, or fail for that.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				name := fmt.Sprintf("k%d", (g+i)%3)
				alg := algs[(g*7+i)%2]
				k := keys[name]
				msg := []byte(fmt.Sprintf("%d/%d", g, i))
				if i%3 != 0 {
					k.Prepare(ctx, alg)
				}
				if i%5 == 4 {
					tag, err := k.SumMAC(cancelled, alg, msg, nil)
					if err != nil && !errors.Is(err, context.Canceled) || err == nil && !bytes.Equal(tag, reference(alg, secrets[name], msg)) {
						t.Errorf("goroutine %d op %d, caller gone: %x %v", g, i, tag, err)
					}
					continue
				}
				tag, err := k.SumMAC(ctx, alg, msg, nil)
				if err != nil || !bytes.Equal(tag, reference(alg, secrets[name], msg)) {
					t.Errorf("goroutine %d op %d %s %s: %x %v", g, i, name, alg, tag, err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Every session comes back, abandoned preparations included.
	for deadline := time.Now().Add(5 * time.Second); p.Sessions().InUse != p.Prepared(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("sessions in use: %d, prepared: %d", p.Sessions().InUse, p.Prepared())
		}
	}
}

// Closing the provider with operations prepared neither hangs nor crashes,
// and later calls fail cleanly.
func TestPreparedClose(t *testing.T) {
	p, _ := newToken(t, nil)
	keys := preparedKeys(t, p, map[string][]byte{"a": []byte("closing")})
	ctx := context.Background()
	keys["a"].Prepare(ctx, providers.SHA256)
	keys["a"].Prepare(ctx, providers.SHA1)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	keys["a"].Prepare(ctx, providers.SHA256)
	if _, err := keys["a"].SumMAC(ctx, providers.SHA256, nil, nil); !errors.Is(err, providers.ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}
