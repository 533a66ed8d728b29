//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// TestStickyUpdateErrorHidesTokenText: an UPDATE that fails in a real
// SoftHSM2 token (the token's files gone when the context outgrows its
// buffer and starts signing in the token) fails the context through the
// whole path, client, socket, agent and provider. The context stays
// failed after the token is back: the next COPY and the FINALIZE after
// it both report ErrUnavailable, and neither reply holds the token's own
// words (a CKR_ name, the module's or the token's path), which the
// agent's log does hold.
func TestStickyUpdateErrorHidesTokenText(t *testing.T) {
	p, tok := newToken(t, func(c *pkcs11.Config) {
		c.BufferBytes = 64
		c.KeyCopies = pkcs11.CopiesOff // C_SignInit reads the token's own object
	})
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "a", []byte("sticky update key")); err != nil {
		t.Fatal(err)
	}
	var log agenttest.SyncBuffer
	a := agenttest.Start(t, agenttest.Options{
		Providers: []providers.Provider{p},
		Logger:    slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := c.New(ctx, "a", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Update([]byte("within the buffer")); err != nil {
		t.Fatal(err)
	}

	dir := softhsm.TokenDir()
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	// Past the buffer: the context takes a session and C_SignInit reads
	// the key's object, whose file is gone. An UPDATE has no reply; the
	// COPY behind it, which the agent runs after it, reports its error.
	updateErr := h.Update(bytes.Repeat([]byte("x"), 4096))
	_, awayErr := h.Copy(ctx)
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	if updateErr != nil {
		t.Fatalf("an UPDATE is not answered; its error waits for the next reply: %v", updateErr)
	}
	// The token serves again, and the context stays failed: it lost
	// input, and a tag over the rest would be wrong.
	waitHealthy(t, p)
	if _, err := c.MAC(ctx, "a", client.SHA256, []byte("m")); err != nil {
		t.Fatalf("MAC after the token came back: %v", err)
	}
	if err := h.Update([]byte("after the failure")); err != nil {
		t.Fatal(err)
	}
	_, copyErr := h.Copy(ctx)
	_, finalErr := h.Finalize(ctx)
	if !strings.Contains(log.String(), "CKR_") {
		t.Errorf("the agent's log does not hold the token's return code:\n%s", log.String())
	}

	forbidden := []string{"CKR_", "pkcs11:", softhsm.Module, softhsm.TokenDir(), tok.Label, tok.PIN}
	for name, err := range map[string]error{"COPY while away": awayErr, "COPY once back": copyErr, "FINALIZE once back": finalErr} {
		if !errors.Is(err, client.ErrUnavailable) {
			t.Errorf("%s after a failed UPDATE: %v, want ErrUnavailable", name, err)
			continue
		}
		for _, s := range forbidden {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%s: the client sees the provider's own text %q: %q", name, s, err)
			}
		}
		t.Logf("%s: %q", name, err)
	}
}
