//go:build cgo

package pkcs11_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// restrictEnv makes the test binary, started by a test, another program:
// it logs in to the token named by the variable ("LABEL PIN KEY") and
// sets the key's CKA_SIGN false.
const restrictEnv = "HMAC_AGENT_TEST_RESTRICT_KEY"

func restrictKey() int {
	f := strings.Fields(os.Getenv(restrictEnv))
	if err := restrictKeyIn(f[0], f[1], f[2]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func restrictKeyIn(token, pin, label string) error {
	ctx := p11.New(softhsm.Module)
	if err := ctx.Initialize(); err != nil {
		return err
	}
	defer ctx.Finalize()
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return err
	}
	for _, slot := range slots {
		if ti, err := ctx.GetTokenInfo(slot); err != nil || strings.TrimRight(ti.Label, " ") != token {
			continue
		}
		s, err := ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			return err
		}
		if err := ctx.Login(s, p11.CKU_USER, pin); err != nil {
			return err
		}
		if err := ctx.FindObjectsInit(s, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, label), p11.NewAttribute(p11.CKA_TOKEN, true)}); err != nil {
			return err
		}
		hs, _, err := ctx.FindObjects(s, 2)
		ctx.FindObjectsFinal(s)
		if err != nil || len(hs) != 1 {
			return fmt.Errorf("find %q: %v %v", label, hs, err)
		}
		return ctx.SetAttributeValue(s, hs[0], []*p11.Attribute{p11.NewAttribute(p11.CKA_SIGN, false)})
	}
	return fmt.Errorf("no token %q", token)
}

// TestChangedByAnotherProgram: another program deletes the key (pkcs11-tool)
// or turns its CKA_SIGN off (this test binary, started again), past the
// agent. With session copies, no MAC asked for more than the revalidation
// window (the real one, 200 ms) after that program finished succeeds;
// without copies, none asked after it finished does.
func TestChangedByAnotherProgram(t *testing.T) {
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Fatalf("pkcs11-tool (Debian package opensc) is needed: %v", err)
	}
	for _, tc := range []struct {
		change  string
		mode    pkcs11.CopyMode
		window  time.Duration
		wantErr error
	}{
		{"delete", pkcs11.CopiesOn, pkcs11.StaleAfter, client.ErrKeyNotFound},
		{"delete", pkcs11.CopiesOff, 0, client.ErrKeyNotFound},
		{"restrict", pkcs11.CopiesOn, pkcs11.StaleAfter, client.ErrUnsupportedAlgorithm},
		{"restrict", pkcs11.CopiesOff, 0, client.ErrUnsupportedAlgorithm},
	} {
		t.Run(fmt.Sprintf("%s/copies=%v", tc.change, tc.mode == pkcs11.CopiesOn), func(t *testing.T) {
			r := newCopiesRig(t, func(c *pkcs11.Config) { c.KeyCopies = tc.mode })
			r.mac(t, "before")
			if want := map[bool]int{true: 1, false: 0}[tc.mode == pkcs11.CopiesOn]; r.copies() != want {
				t.Fatalf("%d session copies, want %d", r.copies(), want)
			}
			var cmd *exec.Cmd
			if tc.change == "delete" {
				cmd = exec.Command("pkcs11-tool", "--module", softhsm.Module, "--token-label", r.tok.Label, "--login", "--pin", r.tok.PIN,
					"--delete-object", "--type", "secrkey", "--label", "k")
			} else {
				cmd = exec.Command(os.Args[0], "-test.run=^$")
				cmd.Env = append(os.Environ(), restrictEnv+"="+r.tok.Label+" "+r.tok.PIN+" k")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", cmd.Path, err, out)
			}
			changed := time.Now()
			for {
				asked := time.Now()
				_, err := r.c.MAC(context.Background(), "k", client.SHA256, []byte("after"))
				if err != nil {
					if !errors.Is(err, tc.wantErr) {
						t.Errorf("MAC %v after the change: %v, want %v", asked.Sub(changed), err, tc.wantErr)
					}
					t.Logf("the key stopped working %v after the change", asked.Sub(changed))
					break
				}
				if asked.Sub(changed) > tc.window {
					t.Fatalf("a MAC asked %v after the change succeeded; the window is %v", asked.Sub(changed), tc.window)
				}
			}
			if tc.change == "delete" && r.copies() != 0 {
				t.Errorf("%d session copies of a key another program deleted, want 0", r.copies())
			}
		})
	}
}

// TestDeleteThroughAgentDropsCache: deleting a key through the agent drops
// at once everything cached about its object, under every name that
// reached it, and a key still held (as a context or the agent holds one)
// is never copied again.
func TestDeleteThroughAgentDropsCache(t *testing.T) {
	r := newCopiesRig(t, nil)
	ctx := context.Background()
	r.mac(t, "by name")
	byURI, err := r.p.Key(ctx, "pkcs11:object=k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := byURI.(providers.OneShot).SumMAC(ctx, providers.SHA256, []byte("by URI"), nil); err != nil {
		t.Fatal(err)
	}
	if got := pkcs11.CachedKeys(r.p); !slices.Contains(got, "pkcs11:object=k") || r.copies() != 2 {
		t.Fatalf("cached %q with %d copies, want the key by name and by URI, with 2", got, r.copies())
	}
	if err := r.c.DeleteKey(ctx, "hsm", "k"); err != nil {
		t.Fatal(err)
	}
	if got := pkcs11.CachedKeys(r.p); len(got) != 0 {
		t.Errorf("still cached after the delete: %q", got)
	}
	if n := r.copies(); n != 0 {
		t.Errorf("%d session copies after the delete, want 0", n)
	}
	if _, err := r.c.MAC(ctx, "k", client.SHA256, nil); !errors.Is(err, client.ErrKeyNotFound) {
		t.Errorf("MAC right after the delete: %v, want ErrKeyNotFound", err)
	}
	attempts := pkcs11.CopyAttempts(r.p)
	if _, err := byURI.(providers.OneShot).SumMAC(ctx, providers.SHA256, nil, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("MAC with a key held across its delete: %v, want ErrKeyNotFound", err)
	}
	if n := pkcs11.CopyAttempts(r.p) - attempts; n != 0 {
		t.Errorf("%d copies attempted of a key dropped from the cache", n)
	}
}

// TestRotationLeavesNoCopyBehind: rotating a key moves its name to the new
// version; the copy made for the name's old object goes at once, rather
// than staying in the token out of the cache's reach.
func TestRotationLeavesNoCopyBehind(t *testing.T) {
	p, _ := newToken(t, nil)
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "r", []byte("rotated key")); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		k, err := p.Key(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, []byte("m"), nil); err != nil {
			t.Fatal(err)
		}
		if n := p.Sessions().Copies; n != 1 {
			t.Fatalf("after %d rotations: %d session copies, want 1 (the current version's)", i, n)
		}
		if _, err := p.RotateKey(ctx, "r", nil, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCopiesByDefault: unless configured, keys are copied on SoftHSM2
// alone, where a token object costs more to use than a session object.
func TestCopiesByDefault(t *testing.T) {
	for id, want := range map[string]bool{
		"SoftHSM project                 ": true,
		"SoftHSM project":                  true,
		"SoftHSM":                          false,
		"Utimaco IS GmbH                 ": false,
		"Safenet, Inc.":                    false,
		"":                                 false,
	} {
		if got := pkcs11.CopiesPay(id); got != want {
			t.Errorf("copies for manufacturer %q: %v, want %v", id, got, want)
		}
	}
	// A module sees tokens made after it was initialized only once every
	// provider on it closed: one token per subtest.
	for _, tc := range []struct {
		name string
		mode pkcs11.CopyMode
		want bool
	}{{"auto", pkcs11.CopiesAuto, true}, {"on", pkcs11.CopiesOn, true}, {"off", pkcs11.CopiesOff, false}} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newToken(t, func(c *pkcs11.Config) { c.KeyCopies = tc.mode })
			if p.KeyCopies() != tc.want {
				t.Errorf("SoftHSM2, copies %s: %v, want %v", tc.name, p.KeyCopies(), tc.want)
			}
		})
	}
}
