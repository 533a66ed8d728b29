package software_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

func openTemp(t testing.TB) *software.Provider {
	t.Helper()
	p, err := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestConformance(t *testing.T) {
	p := openTemp(t)
	providertest.Run(t, providertest.ProviderSubject(p, providers.Algorithms()))
}

func TestKeystoreLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	p, err := software.Open("soft", dir)
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.GenerateKey(ctx, "gen", 0)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "gen" || info.Provider != "soft" || len(info.Algorithms) != len(providers.Algorithms()) || info.Created.IsZero() {
		t.Errorf("generate returned %+v", info)
	}
	if _, err := p.GenerateKey(ctx, "gen", 0); !errors.Is(err, providers.ErrKeyExists) {
		t.Errorf("second generate = %v, want ErrKeyExists", err)
	}
	if _, err := p.ImportKey(ctx, "imp", []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", ".hidden", "-flag", "a/b", "a b", strings.Repeat("x", 129)} {
		if _, err := p.GenerateKey(ctx, bad, 0); !errors.Is(err, providers.ErrInvalidArgument) {
			t.Errorf("generate %q = %v, want ErrInvalidArgument", bad, err)
		}
	}
	for _, n := range []int{-1, software.MaxKeyLength + 1} {
		if _, err := p.GenerateKey(ctx, "len", n); !errors.Is(err, providers.ErrInvalidArgument) {
			t.Errorf("generate of length %d = %v, want ErrInvalidArgument", n, err)
		}
	}
	k, _ := p.Key(ctx, "imp")
	before, _ := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, []byte("m"), nil)
	p.Close()

	// Reopen: both keys are back, and give the same MACs.
	p, err = software.Open("soft", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	list, _ := p.Keys(ctx)
	if len(list) != 2 || list[0].Name != "gen" || list[1].Name != "imp" {
		t.Fatalf("after reopen: %+v", list)
	}
	k, _ = p.Key(ctx, "imp")
	after, _ := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, []byte("m"), nil)
	if string(before) != string(after) {
		t.Error("key changed across reopen")
	}
	if err := p.DeleteKey(ctx, "imp"); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteKey(ctx, "imp"); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("second delete = %v, want ErrKeyNotFound", err)
	}
	if _, err := p.Key(ctx, "imp"); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("key after delete = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "imp.key")); !os.IsNotExist(err) {
		t.Errorf("key file left after delete: %v", err)
	}
}

func TestKeystoreRefusesLoosePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	p, err := software.Open("soft", dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.GenerateKey(context.Background(), "k", 0); err != nil {
		t.Fatal(err)
	}
	p.Close()
	file := filepath.Join(dir, "k.key")

	for _, tc := range []struct {
		path string
		mode os.FileMode
		want string
	}{
		{dir, 0o750, dir + " has mode 0750"},
		{dir, 0o701, dir + " has mode 0701"},
		{file, 0o640, file + " has mode 0640"},
		{file, 0o604, file + " has mode 0604"},
		{file, 0o620, file + " has mode 0620"},
	} {
		orig := os.FileMode(0o600)
		if tc.path == dir {
			orig = 0o700
		}
		os.Chmod(tc.path, tc.mode)
		_, err := software.Open("soft", dir)
		os.Chmod(tc.path, orig)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("mode %04o on %s: err = %v, want it to say %q", tc.mode, tc.path, err, tc.want)
		}
	}
	if _, err := software.Open("soft", dir); err != nil {
		t.Errorf("after restoring modes: %v", err)
	}
}

func TestKeystoreRefusesCorruptFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	os.MkdirAll(dir, 0o700)
	bad := filepath.Join(dir, "broken.key")
	os.WriteFile(bad, []byte("{not json"), 0o600)
	_, err := software.Open("soft", dir)
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("Open with a corrupt file = %v, want an error naming %s", err, bad)
	}
}
