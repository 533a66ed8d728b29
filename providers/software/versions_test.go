package software_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

func sumWith(t *testing.T, k providers.Key, data string) []byte {
	t.Helper()
	m, err := k.NewMAC(context.Background(), providers.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Update(context.Background(), []byte(data)); err != nil {
		t.Fatal(err)
	}
	tag, err := m.Finalize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tag
}

func want(secret, data string) []byte {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(data))
	return h.Sum(nil)
}

func states(t *testing.T, p *software.Provider, name string) map[int]providers.VersionState {
	t.Helper()
	vs, err := p.Versions(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[int]providers.VersionState)
	for _, v := range vs {
		m[v.Version] = v.State
	}
	return m
}

func TestVersionsLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	p, err := software.Open("soft", dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ImportKey(ctx, "k", []byte("one")); err != nil {
		t.Fatal(err)
	}
	// A key made before versions is version 1 with its tags unchanged.
	if got := states(t, p, "k"); len(got) != 1 || got[1] != providers.VersionCurrent {
		t.Fatalf("versions of a new key = %v", got)
	}
	info, err := p.RotateKey(ctx, "k", []byte("two"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != 2 || info.State != providers.VersionCurrent {
		t.Fatalf("rotate = %+v", info)
	}
	if _, err := p.RotateKey(ctx, "k", nil, 0); err != nil {
		t.Fatal(err)
	}
	cur, err := p.Key(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	v1, _ := p.KeyVersion(ctx, "k", 1)
	v2, _ := p.KeyVersion(ctx, "k", 2)
	if !hmac.Equal(sumWith(t, v1, "m"), want("one", "m")) || !hmac.Equal(sumWith(t, v2, "m"), want("two", "m")) {
		t.Error("an old version's tag changed")
	}
	if hmac.Equal(sumWith(t, cur, "m"), want("two", "m")) {
		t.Error("Key returns version 2 after a third was made")
	}
	if got := states(t, p, "k"); got[1] != providers.VersionPrevious || got[2] != providers.VersionPrevious || got[3] != providers.VersionCurrent {
		t.Errorf("states after two rotations = %v", got)
	}
	if err := p.RetireVersion(ctx, "k", 3, false); !errors.Is(err, providers.ErrInvalidArgument) {
		t.Errorf("retiring the current version = %v, want ErrInvalidArgument", err)
	}
	if err := p.RetireVersion(ctx, "k", 9, false); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("retiring a version that never was = %v, want ErrKeyNotFound", err)
	}
	if err := p.RetireVersion(ctx, "k", 2, false); err != nil {
		t.Fatal(err)
	}
	if err := p.RetireVersion(ctx, "k", 1, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.KeyVersion(ctx, "k", 1); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("a destroyed version = %v, want ErrKeyNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "k.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("destroyed version 1's file: %v", err)
	}
	p.Close()

	// Reopened, the keystore keeps every version and every state.
	p, err = software.Open("soft", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	got := states(t, p, "k")
	if got[1] != providers.VersionDestroyed || got[2] != providers.VersionRetired || got[3] != providers.VersionCurrent {
		t.Errorf("states after reopening = %v", got)
	}
	v2, err = p.KeyVersion(ctx, "k", 2)
	if err != nil || !hmac.Equal(sumWith(t, v2, "m"), want("two", "m")) {
		t.Errorf("a retired version after reopening: %v", err)
	}
	// The next rotation never reuses a destroyed version's number.
	if info, err := p.RotateKey(ctx, "k", nil, 0); err != nil || info.Version != 4 {
		t.Errorf("rotate after destroy = %+v, %v", info, err)
	}
	if err := p.DeleteKey(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("files left after delete: %v", left)
	}
}

// Two agents sharing one keystore rotate at once: no version number is
// ever used twice, and each sees the other's versions.
func TestVersionsSharedKeystore(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	a, err := software.Open("a", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.GenerateKey(ctx, "k", 0); err != nil {
		t.Fatal(err)
	}
	b, err := software.Open("b", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const each = 10
	var mu sync.Mutex
	seen := make(map[int]string)
	var wg sync.WaitGroup
	for _, p := range []*software.Provider{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				info, err := p.RotateKey(ctx, "k", nil, 0)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if other, dup := seen[info.Version]; dup {
					t.Errorf("version %d made by both %s and %s", info.Version, other, p.Name())
				}
				seen[info.Version] = p.Name()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, p := range []*software.Provider{a, b} {
		if got := states(t, p, "k"); len(got) != 2*each+1 || got[2*each+1] != providers.VersionCurrent {
			t.Errorf("%s sees %d versions, current %v", p.Name(), len(got), got[2*each+1])
		}
	}
	ka, _ := a.Key(ctx, "k")
	kb, _ := b.Key(ctx, "k")
	if !hmac.Equal(sumWith(t, ka, "m"), sumWith(t, kb, "m")) {
		t.Error("the two providers' current versions differ")
	}
}

// TestVersionsConformance runs the providers' versions suite on a
// keystore, with a second provider on the same directory rotating at the
// same time, as two agents sharing a keystore would.
func TestVersionsConformance(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	open := func(t testing.TB) *software.Provider {
		p, err := software.Open("soft", dir)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p, second := open(t), open(t)
	t.Cleanup(func() { second.Close() })
	providertest.Versions(t, p, providertest.VersionsOptions{
		Second: second,
		Reopen: func(t testing.TB) providertest.Versioned {
			p.Close()
			q := open(t)
			t.Cleanup(func() { q.Close() })
			return q
		},
	})
}
