package tpm_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

// TestRestartReplaysStream: swtpm restarts under streaming contexts
// whose sequences are in the TPM. Those whose input the agent kept go on
// in a new sequence fed that input, a copy made before the restart
// included, and their tags are right; one past the kept input is lost.
func TestRestartReplaysStream(t *testing.T) {
	p, sw, _ := newTPM(t)
	ctx := context.Background()
	secret := []byte("replay")
	if _, err := p.ImportKey(ctx, "k", secret); err != nil {
		t.Fatal(err)
	}
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := bytes.Repeat([]byte("before the restart "), 300) // 5700 bytes: a sequence
	h, _ := c.New(ctx, "k", client.SHA256)
	h.Update(first)
	cp, err := h.Copy(ctx) // a round trip: the sequence is in the TPM
	if err != nil {
		t.Fatal(err)
	}
	long, _ := c.New(ctx, "k", client.SHA256)
	long.Update(make([]byte, tpm.MaxReplay+2000))
	if _, err := long.Copy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sw.Restart(); err != nil {
		t.Fatal(err)
	}
	then := bytes.Repeat([]byte(" and after it"), 200)
	h.Update(then)
	tag, err := h.Finalize(ctx)
	if want := reference(providers.SHA256, secret, append(append([]byte(nil), first...), then...)); err != nil || !bytes.Equal(tag, want) {
		t.Errorf("a stream cut by the restart: %x %v, want %x", tag, err, want)
	}
	tag, err = cp.Finalize(ctx)
	if want := reference(providers.SHA256, secret, first); err != nil || !bytes.Equal(tag, want) {
		t.Errorf("its copy: %x %v, want %x", tag, err, want)
	}
	if _, err := long.Finalize(ctx); !errors.Is(err, client.ErrContextLost) {
		t.Errorf("a stream past the kept input: %v, want ErrContextLost", err)
	}
}
