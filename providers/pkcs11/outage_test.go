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
