//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// TestTokenOutageUnderLoad: SoftHSM2's token directory goes away for 5 s
// and comes back while clients make MACs through an agent. During the
// outage clients see ErrUnavailable and nothing else (never
// ErrKeyNotFound, never a wrong tag); within a few seconds of the
// token's return the provider serves again by itself, having read its
// PIN anew.
func TestTokenOutageUnderLoad(t *testing.T) {
	var pinReads atomic.Int32
	var tok *softhsm.Token
	p, tok := newToken(t, func(c *pkcs11.Config) {
		c.ReadPIN = func() ([]byte, error) { // called after newToken returned
			pinReads.Add(1)
			return []byte(tok.PIN), nil
		}
	})
	ctx := context.Background()
	secret := []byte("outage key")
	if _, err := p.ImportKey(ctx, "a", secret); err != nil {
		t.Fatal(err)
	}
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	a.Soft.ImportKey(ctx, "soft-key", []byte("software"))

	type result struct {
		at  time.Time
		err error
	}
	var (
		mu      sync.Mutex
		results []result
		stop    atomic.Bool
		wg      sync.WaitGroup
		seq     atomic.Int64
	)
	const workers = 4
	for w := range workers {
		c, err := client.Dial(ctx, a.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				msg := []byte(fmt.Sprintf("worker %d message %d", w, seq.Add(1)))
				tag, err := c.MAC(ctx, "a", client.SHA256, msg)
				if err == nil && !bytes.Equal(tag, reference(providers.SHA256, secret, msg)) {
					err = errors.New("wrong tag")
				}
				mu.Lock()
				results = append(results, result{time.Now(), err})
				mu.Unlock()
				if err != nil {
					time.Sleep(time.Millisecond) // a client's retry pause
				}
			}
		}()
	}
	dir := softhsm.TokenDir()
	time.Sleep(300 * time.Millisecond)
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	away := time.Now()
	time.Sleep(5 * time.Second)
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// Run on until the first success after the return, and a second
	// more.
	var firstOK time.Time
	for deadline := back.Add(20 * time.Second); firstOK.IsZero() && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		for _, r := range results {
			if r.err == nil && r.at.After(back) {
				firstOK = r.at
				break
			}
		}
		mu.Unlock()
	}
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()

	counts := map[string]int{}
	var ok, okAway, failed int
	var lastOKAway time.Duration
	for _, r := range results {
		switch {
		case r.err == nil:
			ok++
			if r.at.After(away) && r.at.Before(back) {
				// From the key's session copy, before the token was
				// found gone; the tag was checked.
				okAway++
				lastOKAway = max(lastOKAway, r.at.Sub(away))
			}
		case errors.Is(r.err, client.ErrUnavailable):
			failed++
			counts["unavailable"]++
		default:
			failed++
			counts[r.err.Error()]++
			if counts[r.err.Error()] == 1 {
				t.Errorf("a client saw %v at %s into the outage; only ErrUnavailable is right", r.err, r.at.Sub(away))
			}
		}
	}
	if counts["unavailable"] == 0 {
		t.Error("no request failed while the token was away: the outage was not seen")
	}
	if firstOK.IsZero() {
		t.Fatalf("no MAC succeeded within 20 s of the token's return (%v)", counts)
	}
	t.Logf("token away %.1f s; %d MACs ok (%d while away, the last %s in, from session copies), %d failed %v; first success %.2f s after the token's return; PIN read %d times",
		back.Sub(away).Seconds(), ok, okAway, lastOKAway.Round(time.Millisecond), failed, counts, firstOK.Sub(back).Seconds(), pinReads.Load())
	if pinReads.Load() == 0 {
		t.Error("the provider logged in again without reading its PIN anew")
	}
	// Everything works after it, listing included.
	c, _ := client.Dial(ctx, a.Path)
	defer c.Close()
	if keys, err := c.Keys(ctx); err != nil || len(keys) != 2 {
		t.Errorf("keys after the outage: %v %v", keys, err)
	}
	if err := p.Health(ctx); err != nil {
		t.Errorf("health after the outage: %v", err)
	}
	if err := c.VerifyMAC(ctx, "a", client.SHA256, []byte("m"), reference(providers.SHA256, secret, []byte("m"))); err != nil {
		t.Errorf("VerifyMAC after the outage: %v", err)
	}
}

// outage moves the token directory away until Health finds the token
// gone, then brings it back.
func outage(t *testing.T, p *pkcs11.Provider) {
	t.Helper()
	dir := softhsm.TokenDir()
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	err := p.Health(context.Background())
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("health with the token away: %v, want ErrUnavailable", err)
	}
}

// waitHealthy waits for the provider to recover.
func waitHealthy(t *testing.T, p *pkcs11.Provider) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); p.Health(context.Background()) != nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not recovered: %v", p.Health(context.Background()))
		}
	}
}

// TestStreamAcrossRecovery: a streaming context holds a session when the
// module is re-initialized. Its session's handle may now name a session
// lent to someone else, so the context must never use it: it reports
// ErrContextLost, while new contexts and one-shots, many at once, get
// right tags.
func TestStreamAcrossRecovery(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.BufferBytes = 64 })
	ctx := context.Background()
	secret := []byte("stream key")
	if _, err := p.ImportKey(ctx, "a", secret); err != nil {
		t.Fatal(err)
	}
	k, _ := p.Key(ctx, "a")
	var old []providers.MAC
	for range 4 {
		// Callers of their own, whatever one caller's share of the
		// sessions.
		caller := providers.WithBudget(ctx, providers.NewBudget(0, nil, "caller"))
		m, _ := k.NewMAC(caller, providers.SHA256)
		if err := m.Update(caller, make([]byte, 1000)); err != nil { // holds a session
			t.Fatal(err)
		}
		old = append(old, m)
	}
	if kept := p.Sessions().Kept; kept != 4 {
		t.Fatalf("%d sessions kept by 4 streaming contexts", kept)
	}
	outage(t, p)
	waitHealthy(t, p)
	// New streams take sessions, whose handles may be the old ones'.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := bytes.Repeat([]byte{byte(i)}, 5000)
			for range 20 {
				m, err := k.NewMAC(ctx, providers.SHA256)
				if err == nil {
					err = m.Update(ctx, msg)
				}
				var tag []byte
				if err == nil {
					tag, err = m.Finalize(ctx)
				}
				if err == nil && !bytes.Equal(tag, reference(providers.SHA256, secret, msg)) {
					err = errors.New("wrong tag")
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for _, m := range old {
		err := m.Update(ctx, []byte("more"))
		if err == nil {
			_, err = m.Finalize(ctx)
		}
		if !errors.Is(err, providers.ErrContextLost) {
			t.Errorf("a stream from before the recovery: %v, want ErrContextLost", err)
		}
		m.Close()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a stream after the recovery: %v", err)
	}
}

// TestCloseWhileRecovering: the provider is closed while its token is
// away and the recovery loop runs; nothing crashes, and a provider opened
// after the token's return works.
func TestCloseWhileRecovering(t *testing.T) {
	p, tok := newToken(t, nil)
	ctx := context.Background()
	p.ImportKey(ctx, "a", []byte("a"))
	dir := softhsm.TokenDir()
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := p.Health(ctx); !errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("health with the token away: %v", err)
	}
	time.Sleep(100 * time.Millisecond) // a try or two of the loop
	p.Close()
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Key(ctx, "a"); !errors.Is(err, providers.ErrClosed) {
		t.Errorf("a closed provider: %v, want ErrClosed", err)
	}
	p2, err := pkcs11.Open(ctx, pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	k, err := p2.Key(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if tag, err := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, []byte("m"), nil); err != nil || !bytes.Equal(tag, reference(providers.SHA256, []byte("a"), []byte("m"))) {
		t.Errorf("after reopening: %x %v", tag, err)
	}
}

// TestKeyReadEmptyInOutage: the token goes away while a key's attributes
// are read, and they come back empty (SoftHSM2 reads a token object's
// attributes from its file). The lookup must fail with ErrUnavailable,
// never with ErrUnsupportedAlgorithm or a key that can do nothing, which
// the agent would keep answering "unsupported algorithm" for. With the
// token there, a key read as unable to sign is what it says.
func TestKeyReadEmptyInOutage(t *testing.T) {
	maker, tok := newToken(t, nil)
	ctx := context.Background()
	secret := []byte("empty read key")
	if _, err := maker.ImportKey(ctx, "a", secret); err != nil {
		t.Fatal(err)
	}
	// A provider that has not looked the key up yet.
	p, err := pkcs11.Open(ctx, pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pkcs11.EmptyKeyReads(t, nil)
	if _, err := p.Key(ctx, "a"); !errors.Is(err, providers.ErrUnsupportedAlgorithm) {
		t.Errorf("a key read as unable to sign, token present: %v, want ErrUnsupportedAlgorithm", err)
	}
	dir := softhsm.TokenDir()
	moved := false
	pkcs11.EmptyKeyReads(t, func() {
		if !moved {
			moved = true
			if err := os.Rename(dir, dir+".away"); err != nil {
				t.Error(err)
			}
		}
	})
	k, err := p.Key(ctx, "a")
	if moved {
		if err := os.Rename(dir+".away", dir); err != nil {
			t.Fatal(err)
		}
	}
	if !moved {
		t.Fatal("the key's attributes were not read")
	}
	if !errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("a key read empty as the token went: %v (supports SHA-256: %v), want ErrUnavailable", err, k != nil && k.Supports(providers.SHA256))
	}
	pkcs11.NoKeyReadHook()
	waitHealthy(t, p)
	k, err = p.Key(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if tag, err := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, []byte("m"), nil); err != nil || !bytes.Equal(tag, reference(providers.SHA256, secret, []byte("m"))) {
		t.Errorf("after the token's return: %x %v", tag, err)
	}
}
