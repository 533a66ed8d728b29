package agent_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// slowRotator is a keystore whose RotateKey waits for gate, whatever its
// context says: a device that answers a rotation after its deadline.
type slowRotator struct {
	providers.Provider
	providers.Versioner
	gate chan struct{}
	done chan struct{}
}

func (p *slowRotator) Timeout() time.Duration { return 100 * time.Millisecond }

func (p *slowRotator) RotateKey(ctx context.Context, name string, secret []byte, length int) (providers.VersionInfo, error) {
	<-p.gate
	defer close(p.done)
	return p.Versioner.RotateKey(context.Background(), name, secret, length)
}

// A rotation that imports a secret and passes its deadline stores the
// secret it was given, though the caller wiped its copy as soon as the
// agent answered.
func TestRotationPastDeadlineStoresItsSecret(t *testing.T) {
	ctx := context.Background()
	soft, err := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := soft.ImportKey(ctx, "k", []byte("version one")); err != nil {
		t.Fatal(err)
	}
	slow := &slowRotator{Provider: soft, Versioner: soft, gate: make(chan struct{}), done: make(chan struct{})}
	a, err := agent.New(agent.Options{Providers: []providers.Provider{slow}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	secret := []byte("version two, imported")
	want := bytes.Clone(secret)
	_, err = a.RotateKey(ctx, owner, "soft", "k", secret, 0)
	if !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("a rotation past its deadline: %v, want ErrUnavailable", err)
	}
	clear(secret) // as the socket does with the request's bytes
	close(slow.gate)
	<-slow.done
	tag, err := a.NewSession(owner).MAC(ctx, []byte("k@2"), providers.SHA256, []byte("m"), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, want)
	m.Write([]byte("m"))
	if !bytes.Equal(tag, m.Sum(nil)) {
		t.Fatal("version 2 holds something other than the secret the rotation was given")
	}
}
