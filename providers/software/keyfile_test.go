package software

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
)

// jsonKeyFile is the key file as encoding/json wrote it before the
// format was written by hand; such files must still load.
type jsonKeyFile struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	Secret  []byte    `json:"secret"`
}

func TestKeyFileFormat(t *testing.T) {
	created := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	for _, secret := range [][]byte{nil, {}, []byte("Jefe"), bytes.Repeat([]byte{0xfe}, MaxKeyLength)} {
		text, err := formatKeyFile(secret, created)
		if err != nil {
			t.Fatal(err)
		}
		old, _ := json.Marshal(jsonKeyFile{Version: 1, Created: created, Secret: secret})
		for name, data := range map[string][]byte{"written now": text.Bytes(), "written by encoding/json": old, "with a newline": append(bytes.Clone(old), '\n')} {
			gotCreated, got, err := parseKeyFile(data)
			if err != nil {
				t.Fatalf("%d-byte key %s: %v: %s", len(secret), name, err, data)
			}
			if !gotCreated.Equal(created) || !bytes.Equal(got.Bytes(), secret) {
				t.Errorf("%d-byte key %s: got %v %x", len(secret), name, gotCreated, got.Bytes())
			}
			got.Destroy()
		}
		if !bytes.Equal(text.Bytes(), old) && len(secret) > 0 {
			t.Errorf("the format differs from encoding/json's:\n%s\n%s", text.Bytes(), old)
		}
		text.Destroy()
	}
	for _, bad := range []string{
		``, `{}`, `{"version":2,"created":"2026-11-30T09:00:00Z","secret":"SmVmZQ=="}`,
		`{"version":1,"created":"yesterday","secret":"SmVmZQ=="}`,
		`{"version":1,"created":"2026-11-30T09:00:00Z","secret":"SmVmZQ="}`,
		`{"version":1,"created":"2026-11-30T09:00:00Z","secret":"SmVmZQ=="`,
		`{"version":1,"created":"2026-11-30T09:00:00Z","secret":SmVmZQ==}`,
		`{"version":1,"created":"2026-11-30T09:00:00Z","secret":"SmVmZQ==","extra":1}`,
	} {
		if _, s, err := parseKeyFile([]byte(bad)); err == nil {
			s.Destroy()
			t.Errorf("accepted %q", bad)
		}
	}
}

// FuzzParseKeyFile: any bytes give a key or an error, never a panic,
// and a key that parses formats back to text that parses to it.
func FuzzParseKeyFile(f *testing.F) {
	f.Add([]byte(`{"version":1,"created":"2026-11-30T09:00:00Z","secret":"SmVmZQ=="}`))
	f.Add([]byte(`{"version":1,"created":"2026-11-30T09:00:00.123456789+01:00","secret":null}` + "\n"))
	f.Add([]byte(`{"version":1,"created":"","secret":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		created, secret, err := parseKeyFile(data)
		if err != nil {
			return
		}
		defer secret.Destroy()
		text, err := formatKeyFile(secret.Bytes(), created)
		if err != nil {
			return // a time that does not format, such as a year past 9999
		}
		defer text.Destroy()
		again, secret2, err := parseKeyFile(text.Bytes())
		if err != nil {
			t.Fatalf("%q formats to %q, which does not parse: %v", data, text.Bytes(), err)
		}
		defer secret2.Destroy()
		if !again.Equal(created) || !bytes.Equal(secret.Bytes(), secret2.Bytes()) {
			t.Fatalf("round trip of %q changed it", data)
		}
	})
}

// TestLockedHMACMatchesCryptoHMAC checks the locked construction against
// crypto/hmac for every algorithm and key lengths around each block
// size, through one-shots, contexts and copies.
func TestLockedHMACMatchesCryptoHMAC(t *testing.T) {
	ctx := context.Background()
	msg := []byte("The quick brown fox jumps over the lazy dog")
	for _, n := range []int{0, 1, 20, 63, 64, 65, 71, 72, 73, 103, 104, 105, 127, 128, 129, 135, 136, 137, 143, 144, 145, 300} {
		secret := bytes.Repeat([]byte{byte(n)}, n)
		k, err := newKey("k", secret, time.Now())
		if k == nil {
			t.Fatal(err)
		}
		for _, alg := range providers.Algorithms() {
			want := hmac.New(hashes.New(alg), secret)
			want.Write(msg)
			wantTag := want.Sum(nil)
			got, err := k.SumMAC(ctx, alg, msg, nil)
			if err != nil || !bytes.Equal(got, wantTag) {
				t.Fatalf("%s, %d-byte key: one-shot %x, want %x (%v)", alg, n, got, wantTag, err)
			}
			m, _ := k.NewMAC(ctx, alg)
			m.Update(ctx, msg[:10])
			c, err := m.Copy(ctx)
			if err != nil {
				t.Fatal(err)
			}
			m.Update(ctx, msg[10:])
			c.Update(ctx, msg[10:])
			for _, x := range []providers.MAC{m, c} {
				if got, err := x.Finalize(ctx); err != nil || !bytes.Equal(got, wantTag) {
					t.Fatalf("%s, %d-byte key: context %x, want %x (%v)", alg, n, got, wantTag, err)
				}
			}
		}
		k.destroy()
	}
}

// TestDeletedKeyEndsOpenContexts: delete zeroes and unmaps the keyed
// states, so a context open on the key cannot finish, copy or verify
// afterwards, and says the key is gone.
func TestDeletedKeyEndsOpenContexts(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	p, err := Open("soft", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.ImportKey(ctx, "k", []byte("secret"))
	k, _ := p.Key(ctx, "k")
	var open []providers.MAC
	for range 3 {
		m, err := k.NewMAC(ctx, providers.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		m.Update(ctx, []byte("data"))
		open = append(open, m)
	}
	if err := p.DeleteKey(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "k.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("key file after delete: %v", err)
	}
	if _, err := open[0].Finalize(ctx); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("finalize after delete: %v", err)
	}
	if _, err := open[1].Copy(ctx); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("copy after delete: %v", err)
	}
	if err := open[1].Verify(ctx, make([]byte, 32)); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("verify after delete: %v", err)
	}
	open[2].Close()
	if _, err := k.NewMAC(ctx, providers.SHA256); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("new context after delete: %v", err)
	}
	if _, err := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, nil, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("one-shot after delete: %v", err)
	}
}
