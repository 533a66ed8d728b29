package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
)

// stallingImporter is a device that stops answering in the middle of an
// import: ImportKey waits for gate, whatever its ctx says, and only then
// reads the key it was given, as a token that hangs before it copies the
// request does. What it stored is sent on stored.
type stallingImporter struct {
	gate   chan struct{}
	stored chan []byte
}

func (p *stallingImporter) Name() string                                      { return "stall" }
func (p *stallingImporter) Kind() string                                      { return "test" }
func (p *stallingImporter) Close() error                                      { return nil }
func (p *stallingImporter) Timeout() time.Duration                            { return 100 * time.Millisecond }
func (p *stallingImporter) Keys(context.Context) ([]providers.KeyInfo, error) { return nil, nil }
func (p *stallingImporter) Key(context.Context, string) (providers.Key, error) {
	return nil, fmt.Errorf("stall: %w", providers.ErrKeyNotFound)
}
func (p *stallingImporter) ImportKey(_ context.Context, name string, secret []byte) (providers.KeyInfo, error) {
	<-p.gate
	p.stored <- bytes.Clone(secret)
	return providers.KeyInfo{Name: name, Provider: "stall"}, nil
}

// TestImportPastDeadlineStoresTheKey: an import whose device answers
// only after the deadline fails for the client, but the device's call
// goes on and may still store the key. It must store the key it was
// given, not the zeros the agent wipes the request with once it has
// answered: a key of zeros, stored under the name, would make every tag
// forgeable, and a retry fails with key_exists.
func TestImportPastDeadlineStoresTheKey(t *testing.T) {
	p := &stallingImporter{gate: make(chan struct{}), stored: make(chan []byte, 1)}
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	ctx := context.Background()
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	secret := []byte("the-key-the-device-was-given")
	if _, err := c.ImportKey(ctx, "stall", "late", secret); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("import on a stalled device: %v, want unavailable", err)
	}
	close(p.gate)
	select {
	case got := <-p.stored:
		if !bytes.Equal(got, secret) {
			t.Errorf("the late import stored %q, not the key it was given", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the late import never ran")
	}
}
