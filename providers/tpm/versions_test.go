package tpm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

var _ providertest.Versioned = (*tpm.Provider)(nil)

// TestVersions runs the versions suite on a TPM. A TPM serves one
// connection at a time, so the concurrent rotations share one provider.
func TestVersions(t *testing.T) {
	p, sw, state := newTPM(t)
	providertest.Versions(t, p, providertest.VersionsOptions{
		Reopen: func(t testing.TB) providertest.Versioned {
			p.Close()
			return open(t, sw, state)
		},
	})
}

// TestVersionCrashLeftovers reopens a state directory as a crash would
// leave it: a version half built, and a version whose destruction was
// recorded but whose blobs were not yet removed.
func TestVersionCrashLeftovers(t *testing.T) {
	p, sw, state := newTPM(t)
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("version one")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RotateKey(ctx, "k", []byte("version two"), 0); err != nil {
		t.Fatal(err)
	}
	p.Close()
	keyDir := filepath.Join(state, "keys", "k")
	half := filepath.Join(keyDir, ".tmp-new-123")
	if err := os.Mkdir(half, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(half, "sha256.json"), []byte(`{"version":1,`), 0o600); err != nil {
		t.Fatal(err)
	}
	mark := []byte(`{"retired":"2026-01-02T03:04:05Z"}`)
	if err := os.WriteFile(filepath.Join(keyDir, "destroyed-1.json"), mark, 0o600); err != nil {
		t.Fatal(err)
	}
	p = open(t, sw, state)
	if _, err := os.Stat(half); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the half-built version is still there: %v", err)
	}
	vs, err := p.Versions(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 || vs[0].State != providers.VersionDestroyed || vs[1].State != providers.VersionCurrent {
		t.Fatalf("versions after the crash: %+v", vs)
	}
	if _, err := p.KeyVersion(ctx, "k", 1); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("KeyVersion of a version recorded destroyed: %v", err)
	}
	if err := p.RetireVersion(ctx, "k", 1, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(keyDir, "sha256.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("destroying again left version 1's blob: %v", err)
	}
	if vi, err := p.RotateKey(ctx, "k", []byte("version three"), 0); err != nil || vi.Version != 3 {
		t.Fatalf("rotation after the crash: %+v, %v", vi, err)
	}
}

// TestHostileVersionFiles: files in a key's directory that the agent did
// not write are not versions, and their numbers are never used.
func TestHostileVersionFiles(t *testing.T) {
	p, _, state := newTPM(t)
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("version one")); err != nil {
		t.Fatal(err)
	}
	keyDir := filepath.Join(state, "keys", "k")
	for _, f := range []string{"retired-1000.json", "retired-99999999999999999999.json", "destroyed-0.json", "other-3.json"} {
		if err := os.WriteFile(filepath.Join(keyDir, f), []byte(`{"retired":"2026-01-02T03:04:05Z"}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"v02", "v1073741825", "vx"} {
		if err := os.Mkdir(filepath.Join(keyDir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	vs, err := p.Versions(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || vs[0].Version != 1 || vs[0].State != providers.VersionCurrent {
		t.Fatalf("versions among foreign files: %+v", vs)
	}
	vi, err := p.RotateKey(ctx, "k", []byte("version two"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if vi.Version != 1001 {
		t.Errorf("rotation beside retired-1000.json made version %d, want 1001", vi.Version)
	}
	if vs, err = p.Versions(ctx, "k"); err != nil || len(vs) != 2 || vs[1].State != providers.VersionCurrent {
		t.Fatalf("versions after the rotation: %+v, %v", vs, err)
	}
}

// TestTwoProvidersOneStateDir rotates one key at once through two
// providers on one state directory (each on a TPM of its own, since a TPM
// serves one connection): the rename that publishes a version fails when
// the number is taken, so no number is made twice, and each provider's
// versions compute the tags of the key it imported.
func TestTwoProvidersOneStateDir(t *testing.T) {
	a, _, state := newTPM(t)
	ctx := context.Background()
	if _, err := a.ImportKey(ctx, "k", []byte("version one")); err != nil {
		t.Fatal(err)
	}
	b := open(t, swtpm.Require(t), state)
	const perProvider = 4
	type made struct {
		p      *tpm.Provider
		n      int
		secret []byte
	}
	var (
		mu   sync.Mutex
		all  []made
		wg   sync.WaitGroup
		errs = make(chan error, 2*perProvider)
	)
	for i, p := range []*tpm.Provider{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perProvider {
				secret := []byte(fmt.Sprintf("provider %d rotation %d", i, j))
				vi, err := p.RotateKey(ctx, "k", secret, 0)
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				all = append(all, made{p, vi.Version, secret})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("RotateKey: %v", err)
	}
	seen := map[int]bool{}
	for _, m := range all {
		if seen[m.n] {
			t.Fatalf("two rotations made version %d", m.n)
		}
		seen[m.n] = true
	}
	for _, p := range []*tpm.Provider{a, b} {
		vs, err := p.Versions(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) != 1+len(all) {
			t.Errorf("%d versions listed after %d rotations: %+v", len(vs), len(all), vs)
		}
	}
	msg := []byte("m")
	for _, m := range all {
		k, err := m.p.KeyVersion(ctx, "k", m.n)
		if err != nil {
			t.Fatal(err)
		}
		tag, err := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, msg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := reference(providers.SHA256, m.secret, msg); !bytes.Equal(tag, want) {
			t.Errorf("version %d: %x, want %x", m.n, tag, want)
		}
	}
}

// TestListedCreationIsTheKeys: rotating does not make a key look newer in
// the listing, before or after a restart.
func TestListedCreationIsTheKeys(t *testing.T) {
	p, sw, state := newTPM(t)
	ctx := context.Background()
	info, err := p.ImportKey(ctx, "k", []byte("version one"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // creation times are in seconds
	if _, err := p.RotateKey(ctx, "k", []byte("version two"), 0); err != nil {
		t.Fatal(err)
	}
	check := func(p *tpm.Provider, when string) {
		t.Helper()
		keys, err := p.Keys(ctx)
		if err != nil || len(keys) != 1 {
			t.Fatalf("%s: %v, %v", when, keys, err)
		}
		if !keys[0].Created.Equal(info.Created) {
			t.Errorf("%s: the key is listed as created %v, want %v", when, keys[0].Created, info.Created)
		}
	}
	check(p, "after rotation")
	p.Close()
	check(open(t, sw, state), "after reopening")
}
