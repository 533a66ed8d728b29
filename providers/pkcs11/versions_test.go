//go:build cgo

package pkcs11_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
)

var _ providertest.Versioned = (*pkcs11.Provider)(nil)

// TestVersions runs the versions suite with two provider instances on one
// token, as two agents sharing a network HSM would be.
func TestVersions(t *testing.T) {
	p, tok := newToken(t, nil)
	cfg := pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN)}
	second, err := pkcs11.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })
	d := direct(t, tok)
	providertest.Versions(t, p, providertest.VersionsOptions{
		// As another tool, or a release before versions, makes a key:
		// a labelled secret key with an ID of its own and no record.
		Legacy: func(t testing.TB, name string, secret []byte) {
			_, err := d.ctx.CreateObject(d.s, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
				p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
				p11.NewAttribute(p11.CKA_TOKEN, true),
				p11.NewAttribute(p11.CKA_PRIVATE, true),
				p11.NewAttribute(p11.CKA_SENSITIVE, true),
				p11.NewAttribute(p11.CKA_SIGN, true),
				p11.NewAttribute(p11.CKA_VERIFY, true),
				p11.NewAttribute(p11.CKA_LABEL, name),
				p11.NewAttribute(p11.CKA_ID, []byte{0x0a, 0x0b}),
				p11.NewAttribute(p11.CKA_VALUE, secret),
			})
			if err != nil {
				t.Fatal(err)
			}
		},
		Second: second,
		Reopen: func(t testing.TB) providertest.Versioned {
			p.Close()
			second.Close()
			again, err := pkcs11.Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { again.Close() })
			return again
		},
	})
}

// record adds a version record past the provider, as another program, a
// crashed rotation or someone holding the PIN could.
func (d *directToken) record(name, label, value string) p11.ObjectHandle {
	d.t.Helper()
	h, err := d.ctx.CreateObject(d.s, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_APPLICATION, "hmac-agent/versions/"+name),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_VALUE, []byte(value)),
	})
	if err != nil {
		d.t.Fatal(err)
	}
	return h
}

func wantVersions(t *testing.T, p *pkcs11.Provider, name, want string) {
	t.Helper()
	vs, err := p.Versions(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		got = append(got, fmt.Sprintf("%d:%s", v.Version, v.State))
	}
	if strings.Join(got, " ") != want {
		t.Fatalf("versions of %s: %s, want %s", name, strings.Join(got, " "), want)
	}
}

// TestRotationClaimsLeftBehind: a rotation that stopped after claiming
// its number must not block the next one. A recent claim's number is
// skipped; a stale one is removed, with the key object it made, and its
// number used.
func TestRotationClaimsLeftBehind(t *testing.T) {
	p, tok := newToken(t, nil)
	d := direct(t, tok)
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("version one")); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	stale := d.record("k", "k@2~stale", `{"version":2,"id":"`+base64.StdEncoding.EncodeToString([]byte("k@2~stale"))+`","created":"`+old+`"}`)
	if _, err := p.RotateKey(ctx, "k", []byte("version two"), 0); err != nil {
		t.Fatal(err)
	}
	wantVersions(t, p, "k", "1:previous 2:current")
	if _, err := d.ctx.GetAttributeValue(d.s, stale, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil)}); err == nil {
		t.Error("the stale claim is still in the token")
	}
	now := time.Now().UTC().Format(time.RFC3339)
	d.record("k", "k@3~live", `{"version":3,"created":"`+now+`"}`)
	vi, err := p.RotateKey(ctx, "k", []byte("version four"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if vi.Version != 4 {
		t.Fatalf("rotation beside a live claim of 3 made version %d, want 4", vi.Version)
	}
	wantVersions(t, p, "k", "1:previous 2:previous 4:current")
}

// TestHostileVersionRecords: records the agent did not write (unparsable,
// absurd numbers, labels that do not match) are ignored, never trusted
// and never a reason to walk billions of numbers.
func TestHostileVersionRecords(t *testing.T) {
	p, tok := newToken(t, nil)
	d := direct(t, tok)
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("version one")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RotateKey(ctx, "k", []byte("version two"), 0); err != nil {
		t.Fatal(err)
	}
	d.record("k", "k@3", "not json")
	d.record("k", "k@4611686018427387904", `{"version":4611686018427387904}`)
	d.record("k", "k@1000", `{"version":1000}`)
	d.record("k", "k@5", `{"version":6}`)
	d.record("k", "other@7", `{"version":7}`)
	d.record("k", "k@2", `{"version":2,"retired":"nonsense"}`)
	wantVersions(t, p, "k", "1:previous 2:current")
	// Numbers any record names are never reused, even one the agent
	// did not write.
	vi, err := p.RotateKey(ctx, "k", []byte("version three"), 0)
	if err != nil || vi.Version != 1001 {
		t.Fatalf("rotation among hostile records: %+v, %v", vi, err)
	}
	wantVersions(t, p, "k", "1:previous 2:previous 1001:current")
	for _, ref := range []string{"k@0", "k@01", "k@+3", "k@-1", "k@9999999999999999999999"} {
		if _, err := p.Key(ctx, ref); !errors.Is(err, providers.ErrInvalidArgument) {
			t.Errorf("Key(%q): %v, want ErrInvalidArgument", ref, err)
		}
	}
	k, err := p.Key(ctx, "k@1001")
	if err != nil {
		t.Fatal(err)
	}
	m, err := k.NewMAC(ctx, providers.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	m.Update(ctx, []byte("m"))
	if err := m.Verify(ctx, reference(providers.SHA256, []byte("version three"), []byte("m"))); err != nil {
		t.Errorf("k@1001 does not verify version three's tag: %v", err)
	}
}

// TestCurrentIsNotAlwaysTheHighestNumber: a destroyed version numbered
// past the current one (a record another program wrote) does not hide the
// current version.
func TestCurrentIsNotAlwaysTheHighestNumber(t *testing.T) {
	p, tok := newToken(t, nil)
	d := direct(t, tok)
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("version one")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RotateKey(ctx, "k", []byte("version two"), 0); err != nil {
		t.Fatal(err)
	}
	d.record("k", "k@9", `{"version":9,"destroyed":true}`)
	wantVersions(t, p, "k", "1:previous 2:current 9:destroyed")
	k, err := p.Key(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	m, err := k.NewMAC(ctx, providers.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	m.Update(ctx, []byte("m"))
	if err := m.Verify(ctx, reference(providers.SHA256, []byte("version two"), []byte("m"))); err != nil {
		t.Errorf("Key(k) is not version 2: %v", err)
	}
	if vi, err := p.RotateKey(ctx, "k", []byte("version ten"), 0); err != nil || vi.Version != 10 {
		t.Fatalf("rotation past a destroyed version 9: %+v, %v", vi, err)
	}
}

// countData is how many data objects have the application, read past the
// provider.
func (d *directToken) countData(application string) int {
	d.t.Helper()
	if err := d.ctx.FindObjectsInit(d.s, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_APPLICATION, application),
	}); err != nil {
		d.t.Fatal(err)
	}
	hs, _, err := d.ctx.FindObjects(d.s, 1000)
	d.ctx.FindObjectsFinal(d.s)
	if err != nil {
		d.t.Fatal(err)
	}
	return len(hs)
}

// TestSlowRotationGivesUp: a rotation whose token took so long that its
// claim could be taken for stale gives up rather than commit, and leaves
// neither its claim nor its key object behind.
func TestSlowRotationGivesUp(t *testing.T) {
	p, tok := newToken(t, nil)
	d := direct(t, tok)
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("version one")); err != nil {
		t.Fatal(err)
	}
	before := d.countData("hmac-agent/versions/k") // version 1's
	pkcs11.SetStaleClaim(t, time.Nanosecond)
	if _, err := p.RotateKey(ctx, "k", []byte("version two"), 0); !errors.Is(err, providers.ErrUnavailable) {
		t.Fatalf("a rotation slower than its claim may live: %v, want ErrUnavailable", err)
	}
	if n := d.countData("hmac-agent/versions/k") - before; n != 0 {
		t.Errorf("%d records left behind", n)
	}
	if err := d.ctx.FindObjectsInit(d.s, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, "k@2")}); err != nil {
		t.Fatal(err)
	}
	hs, _, _ := d.ctx.FindObjects(d.s, 10)
	d.ctx.FindObjectsFinal(d.s)
	if len(hs) != 0 {
		t.Errorf("%d key objects labelled k@2 left behind", len(hs))
	}
	wantVersions(t, p, "k", "1:current")
}

// TestNewKeysAreDated: a key the provider makes has a dated version 1,
// so rotate_every counts from then rather than taking it as due (an
// undated version, as a key made before versions has, counts as due).
func TestNewKeysAreDated(t *testing.T) {
	p, _ := newToken(t, nil)
	ctx := context.Background()
	before := time.Now().Add(-time.Second)
	if _, err := p.ImportKey(ctx, "imported", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GenerateKey(ctx, "generated", 0); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"imported", "generated"} {
		vs, err := p.Versions(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) != 1 || vs[0].Version != 1 || vs[0].State != providers.VersionCurrent {
			t.Fatalf("%s: versions %+v, want version 1 current", name, vs)
		}
		if c := vs[0].Created; c.Before(before) || c.After(time.Now().Add(time.Second)) {
			t.Errorf("%s: version 1 created %v, want now", name, c)
		}
	}
	// Deleting the key deletes the record: the name can be made again.
	if err := p.DeleteKey(ctx, "imported"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ImportKey(ctx, "imported", []byte("again")); err != nil {
		t.Errorf("import after delete: %v", err)
	}
}
