//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
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

	keys["a"].Prepare(ctx, providers.SHA256, false)
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
	keys["a"].Prepare(ctx, providers.SHA256, false)
	keys["b"].Prepare(ctx, providers.SHA256, false)
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
	pkcs11.SetStaleAfter(t, maxAge)
	p, _ := newToken(t, nil)
	keys := preparedKeys(t, p, map[string][]byte{"a": []byte("expiring")})
	keys["a"].Prepare(context.Background(), providers.SHA256, false)
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
		keys["a"].Prepare(ctx, providers.SHA256, false)
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
					k.Prepare(ctx, alg, i%4 == 0)
				}
				if i%4 == 0 {
					if err := k.VerifyMAC(ctx, alg, msg, reference(alg, secrets[name], msg)); err != nil {
						t.Errorf("goroutine %d op %d %s %s: VerifyMAC: %v", g, i, name, alg, err)
						return
					}
					continue
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
	for deadline := time.Now().Add(5 * time.Second); p.Sessions().InUse != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("sessions still in use: %+v", p.Sessions())
		}
	}
}

// Closing the provider with operations prepared neither hangs nor crashes,
// and later calls fail cleanly.
func TestPreparedClose(t *testing.T) {
	p, _ := newToken(t, nil)
	keys := preparedKeys(t, p, map[string][]byte{"a": []byte("closing")})
	ctx := context.Background()
	keys["a"].Prepare(ctx, providers.SHA256, false)
	keys["a"].Prepare(ctx, providers.SHA1, false)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	keys["a"].Prepare(ctx, providers.SHA256, false)
	if _, err := keys["a"].SumMAC(ctx, providers.SHA256, nil, nil); !errors.Is(err, providers.ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}

// VerifyMAC uses operations prepared with C_VerifyInit, and only those;
// a rejected tag is still the token's answer, and the session goes back
// usable.
func TestPreparedVerify(t *testing.T) {
	p, _ := newToken(t, nil)
	secret := []byte("prepared-verify")
	keys := preparedKeys(t, p, map[string][]byte{"a": secret})
	a := keys["a"]
	ctx := context.Background()
	msg := []byte("webhook body")
	good := reference(providers.SHA256, secret, msg)
	bad := bytes.Clone(good)
	bad[0] ^= 1

	a.Prepare(ctx, providers.SHA256, false)
	if err := a.VerifyMAC(ctx, providers.SHA256, msg, good); err != nil {
		t.Fatalf("VerifyMAC beside a prepared signature: %v", err)
	}
	if n := p.Prepared(); n != 1 {
		t.Errorf("VerifyMAC used an operation prepared for signing")
	}
	sumMAC(t, a, providers.SHA256, msg)

	for _, c := range []struct {
		tag  []byte
		want error
	}{{good, nil}, {bad, providers.ErrInvalidSignature}, {good, nil}} {
		a.Prepare(ctx, providers.SHA256, true)
		used := p.Sessions().Used
		if err := a.VerifyMAC(ctx, providers.SHA256, msg, c.tag); !errors.Is(err, c.want) {
			t.Errorf("VerifyMAC on a prepared operation: %v, want %v", err, c.want)
		}
		if p.Sessions().Used != used+1 || p.Prepared() != 0 {
			t.Errorf("the prepared verification was not used")
		}
	}
	if tag := sumMAC(t, a, providers.SHA256, msg); !bytes.Equal(tag, good) {
		t.Error("signing after prepared verifications: wrong tag")
	}
}

// Prepared verifications that expire or are taken back leave their
// sessions fit for anything.
func TestPreparedVerifyCancelled(t *testing.T) {
	maxAge := 20 * time.Millisecond
	pkcs11.SetStaleAfter(t, maxAge)
	p, _ := newToken(t, func(c *pkcs11.Config) { c.Sessions = 2; c.PreparedSessions = 1; c.BufferBytes = 16 })
	secret := []byte("cancelled-verify")
	keys := preparedKeys(t, p, map[string][]byte{"a": secret})
	a := keys["a"]
	ctx := context.Background()
	big := bytes.Repeat([]byte("z"), 100)

	a.Prepare(ctx, providers.SHA256, true)
	for deadline := time.Now().Add(5 * time.Second); p.Prepared() > 0; time.Sleep(maxAge) {
		if time.Now().After(deadline) {
			t.Fatal("a prepared verification never expired")
		}
	}
	// Both sessions, the expired one among them, stream.
	var held []providers.MAC
	for range 2 {
		m, _ := a.NewMAC(ctx, providers.SHA256)
		if err := m.Update(ctx, big); err != nil {
			t.Fatalf("streaming on a session whose verification expired: %v", err)
		}
		held = append(held, m)
	}
	for _, m := range held {
		if err := m.Verify(ctx, reference(providers.SHA256, secret, big)); err != nil {
			t.Error(err)
		}
	}

	// Taken back by a context that finds the pool empty.
	a.Prepare(ctx, providers.SHA256, true)
	m1, _ := a.NewMAC(ctx, providers.SHA256)
	m2, _ := a.NewMAC(ctx, providers.SHA256)
	for _, m := range []providers.MAC{m1, m2} {
		if err := m.Update(ctx, big); err != nil {
			t.Fatalf("streaming beside a prepared verification: %v", err)
		}
	}
	for _, m := range []providers.MAC{m1, m2} {
		if err := m.Verify(ctx, reference(providers.SHA256, secret, big)); err != nil {
			t.Error(err)
		}
	}
}

// Cancelling a prepared verification relies on the token ending the
// operation when C_VerifyFinal gets a tag of the wrong length.
func TestVerifyFinalOfWrongLengthEndsTheOperation(t *testing.T) {
	p, tok := newToken(t, nil)
	if _, err := p.ImportKey(context.Background(), "a", []byte("wrong-length")); err != nil {
		t.Fatal(err)
	}
	d := direct(t, tok)
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_SHA256_HMAC, nil)}
	h := d.find("a")
	if err := d.ctx.VerifyInit(d.s, mech, h); err != nil {
		t.Fatal(err)
	}
	if err := d.ctx.VerifyFinal(d.s, []byte{0}); err == nil || !strings.Contains(err.Error(), "CKR_SIGNATURE_LEN_RANGE") {
		t.Errorf("C_VerifyFinal with a 1-byte tag: %v", err)
	}
	if err := d.ctx.SignInit(d.s, mech, h); err != nil {
		t.Errorf("C_SignInit after it: %v", err)
	}
	d.ctx.SignFinal(d.s)
}

// Through a socket: after two like one-shots, MAC or VerifyMAC, the agent
// prepares the third, which uses it; one-shots of different kinds in turn
// prepare nothing.
func TestPreparedThroughAgent(t *testing.T) {
	p, _ := newToken(t, nil)
	ctx := context.Background()
	secret := []byte("through-the-agent")
	p.ImportKey(ctx, "k", secret)
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("body")
	good := reference(providers.SHA256, secret, msg)
	mac := func() {
		t.Helper()
		if tag, err := c.MAC(ctx, "k", client.SHA256, msg); err != nil || !bytes.Equal(tag, good) {
			t.Fatalf("MAC: %x %v", tag, err)
		}
	}
	verify := func(tag []byte, want error) {
		t.Helper()
		if err := c.VerifyMAC(ctx, "k", client.SHA256, msg, tag); !errors.Is(err, want) {
			t.Fatalf("VerifyMAC: %v, want %v", err, want)
		}
	}
	bad := bytes.Clone(good)
	bad[1] ^= 1

	for range 3 { // MAC, VerifyMAC, MAC, ...: nothing alike twice
		mac()
		verify(good, nil)
	}
	time.Sleep(20 * time.Millisecond)
	if st := p.Sessions(); st.Prepared != 0 || st.Used != 0 {
		t.Fatalf("prepared for one-shots of different kinds in turn: %+v", st)
	}

	mac()
	mac()
	waitPrepared(t, p)
	mac()
	if st := p.Sessions(); st.Used != 1 {
		t.Errorf("the third MAC did not use the prepared signature: %+v", st)
	}
	// Two verifications, the rejected one too, have the agent prepare
	// for a third. (It prepares off the reader if the token is not
	// quick at the moment: then a verification may come first.)
	used := p.Sessions().Used
	verify(bad, client.ErrInvalidSignature)
	verify(good, nil)
	for deadline := time.Now().Add(5 * time.Second); p.Sessions().Used == used; {
		if time.Now().After(deadline) {
			t.Fatal("no VerifyMAC used a prepared verification")
		}
		verify(good, nil)
	}
}
