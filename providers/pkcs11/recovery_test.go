//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
)

// recoveryRig is an agent with a token provider and a software key beside
// it, and a client; the token's keys are "a" and "b".
type recoveryRig struct {
	p       *pkcs11.Provider
	d       *directToken
	c       *client.Client
	secretA []byte
}

func newRecoveryRig(t *testing.T) *recoveryRig {
	return newRecoveryRigWith(t, nil)
}

func newRecoveryRigWith(t *testing.T, tweak func(*pkcs11.Config)) *recoveryRig {
	p, tok := newToken(t, func(c *pkcs11.Config) {
		c.BufferBytes = 64
		if tweak != nil {
			tweak(c)
		}
	})
	ctx := context.Background()
	r := &recoveryRig{p: p, secretA: []byte("recovery-key-a")}
	p.ImportKey(ctx, "a", r.secretA)
	p.ImportKey(ctx, "b", []byte("recovery-key-b"))
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	a.Soft.ImportKey(ctx, "soft-key", []byte("software"))
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r.c = c
	r.d = direct(t, tok)
	// Warm up: sessions open, handles cached.
	for _, k := range []string{"a", "b", "soft-key"} {
		if _, err := c.MAC(ctx, k, client.SHA256, []byte("warm")); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *recoveryRig) check(t *testing.T, what string) {
	t.Helper()
	ctx := context.Background()
	tag, err := r.c.MAC(ctx, "a", client.SHA256, []byte("after"))
	if err != nil || !bytes.Equal(tag, reference(providers.SHA256, r.secretA, []byte("after"))) {
		t.Errorf("%s: MAC on the token: %x %v", what, tag, err)
	}
	if err := r.c.VerifyMAC(ctx, "a", client.SHA256, []byte("after"), tag); err != nil {
		t.Errorf("%s: VerifyMAC on the token: %v", what, err)
	}
	if _, err := r.c.MAC(ctx, "soft-key", client.SHA256, []byte("after")); err != nil {
		t.Errorf("%s: the software key: %v", what, err)
	}
}

// streaming opens a context that holds a session.
func (r *recoveryRig) streaming(t *testing.T) *client.HMAC {
	t.Helper()
	h, err := r.c.New(context.Background(), "a", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	h.Update(make([]byte, 1000))
	if _, err := h.Copy(context.Background()); err != nil { // a round trip: the update has run
		t.Fatal(err)
	}
	return h
}

func TestRecoverAllSessionsClosed(t *testing.T) {
	r := newRecoveryRig(t)
	cut := r.streaming(t)
	buffered, _ := r.c.New(context.Background(), "a", client.SHA256)
	buffered.Update([]byte("small"))
	// Closing every session of the application also logs it out.
	if err := r.d.ctx.CloseAllSessions(r.d.slot); err != nil {
		t.Fatal(err)
	}
	_, err := cut.Finalize(context.Background())
	if !errors.Is(err, client.ErrContextLost) {
		t.Errorf("streaming context cut underneath: %v, want ErrContextLost", err)
	}
	r.check(t, "after C_CloseAllSessions")
	// The copies' session went too, with every copy: the keys used since
	// have new ones, and only those are counted.
	if n := r.p.Sessions().Copies; n != 1 {
		t.Errorf("%d session copies after C_CloseAllSessions and using one key, want 1", n)
	}
	if tag, err := buffered.Finalize(context.Background()); err != nil || !bytes.Equal(tag, reference(providers.SHA256, r.secretA, []byte("small"))) {
		t.Errorf("a buffered context lives through it: %x %v", tag, err)
	}
}

func TestRecoverLogout(t *testing.T) {
	r := newRecoveryRig(t)
	if err := r.d.ctx.Logout(r.d.s); err != nil {
		t.Fatal(err)
	}
	r.check(t, "after C_Logout")
}

// A key another program deletes stops signing: at once without session
// copies, else within staleAfter.
func TestKeyDeletedUnderneath(t *testing.T) {
	for _, copies := range []bool{false, true} {
		t.Run(fmt.Sprintf("session_key_copies=%v", copies), func(t *testing.T) {
			maxAge := 20 * time.Millisecond
			pkcs11.SetStaleAfter(t, maxAge)
			r := newRecoveryRigWith(t, func(c *pkcs11.Config) {
				c.KeyCopies = map[bool]pkcs11.CopyMode{true: pkcs11.CopiesOn, false: pkcs11.CopiesOff}[copies]
			})
			if _, err := r.c.MAC(context.Background(), "b", client.SHA256, nil); err != nil {
				t.Fatal(err)
			}
			if err := r.d.ctx.DestroyObject(r.d.s, r.d.find("b")); err != nil {
				t.Fatal(err)
			}
			if copies {
				time.Sleep(2 * maxAge)
			}
			if _, err := r.c.MAC(context.Background(), "b", client.SHA256, nil); !errors.Is(err, client.ErrKeyNotFound) {
				t.Errorf("deleted key: %v, want ErrKeyNotFound", err)
			}
			r.check(t, "after deleting another key")
		})
	}
}

func TestLogsHoldNoSecretsOrPIN(t *testing.T) {
	p, tok := newToken(t, nil)
	var buf bytes.Buffer
	var mu sync.Mutex
	w := writerFunc(func(b []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(b) })
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}, Logger: log, Audit: slog.New(slog.NewJSONHandler(w, nil))})
	c, err := client.Dial(context.Background(), a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	providertest.CheckLogsHoldNoSecrets(t, c, "hsm", client.SHA256, func() string {
		mu.Lock()
		defer mu.Unlock()
		return buf.String()
	}, []byte(tok.PIN), []byte(tok.SOPIN))
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func TestSessionMetrics(t *testing.T) {
	p, _ := newToken(t, nil)
	m := metrics.New()
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}, Observe: m.Observe})
	m.Watch(a.Agent, a.Server)
	ctx := context.Background()
	p.ImportKey(ctx, "k", []byte("k"))
	c, _ := client.Dial(ctx, a.Path)
	defer c.Close()
	for range 3 {
		c.MAC(ctx, "k", client.SHA256, nil)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`hmac_agent_pkcs11_sessions_open{kind="pkcs11",provider="hsm"}`,
		`hmac_agent_pkcs11_sessions_in_use{kind="pkcs11",provider="hsm"} 0`,
		`hmac_agent_pkcs11_session_waits_total{kind="pkcs11",provider="hsm"} 0`,
		`hmac_agent_provider_up{kind="pkcs11",provider="hsm"} 1`,
		`hmac_agent_pkcs11_key_copies{kind="pkcs11",provider="hsm"} 1`,
		`hmac_agent_operations_total{key="k",operation="mac",result="ok"} 3`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
