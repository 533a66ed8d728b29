//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
)

// softHSMAlgorithms are the HMAC mechanisms SoftHSM2 2.6 has.
var softHSMAlgorithms = []providers.Algorithm{providers.SHA1, providers.SHA224, providers.SHA256, providers.SHA384, providers.SHA512, providers.MD5}

func reference(alg providers.Algorithm, key, msg []byte) []byte {
	h := hmac.New(hashes.New(alg), key)
	h.Write(msg)
	return h.Sum(nil)
}

func directSubject(p *pkcs11.Provider) providertest.Subject {
	s := providertest.ProviderSubject(p, p.Algorithms())
	s.Concurrency = 64
	return s
}

func TestMechanismsFromToken(t *testing.T) {
	p, _ := newToken(t, nil)
	if got := fmt.Sprint(p.Algorithms()); got != fmt.Sprint(softHSMAlgorithms) {
		t.Errorf("algorithms %s, want %s", got, softHSMAlgorithms)
	}
}

func TestConformance(t *testing.T) {
	p, _ := newToken(t, nil)
	providertest.Run(t, directSubject(p))
}

// TestConformanceThroughAgent runs the suite, vectors included, through the
// whole path: client, socket, agent, provider, token.
func TestConformanceThroughAgent(t *testing.T) {
	p, _ := newToken(t, nil)
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(context.Background(), a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := providertest.ClientSubject(c, "hsm", p.Algorithms())
	s.Concurrency = 64
	providertest.Run(t, s)
}

func TestShortKeysArePadded(t *testing.T) {
	p, _ := newToken(t, nil)
	ctx := context.Background()
	for _, n := range []int{0, 1, 4, 20, 32, 63, 64, 65, 100, 131} {
		secret := bytes.Repeat([]byte{0xa5}, n)
		name := fmt.Sprintf("len%d", n)
		if _, err := p.ImportKey(ctx, name, secret); err != nil {
			t.Fatalf("import %d bytes: %v", n, err)
		}
		k, err := p.Key(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, alg := range softHSMAlgorithms {
			tag, err := k.(providers.OneShot).SumMAC(ctx, alg, []byte("msg"), nil)
			if err != nil {
				t.Fatalf("%d-byte key, %s: %v", n, alg, err)
			}
			if want := reference(alg, secret, []byte("msg")); !bytes.Equal(tag, want) {
				t.Errorf("%d-byte key, %s: tag %x, crypto/hmac with the unpadded key %x", n, alg, tag, want)
			}
		}
	}
}

func TestGeneratedKeysAreNonExtractable(t *testing.T) {
	p, tok := newToken(t, nil)
	ctx := context.Background()
	info, err := p.GenerateKey(ctx, "gen", 0)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(info.Algorithms) != fmt.Sprint(softHSMAlgorithms) {
		t.Errorf("generated key can do %v", info.Algorithms)
	}
	if _, err := p.GenerateKey(ctx, "gen", 0); !errors.Is(err, providers.ErrKeyExists) {
		t.Errorf("second generate: %v", err)
	}
	if _, err := p.ImportKey(ctx, "imp", []byte("imported")); err != nil {
		t.Fatal(err)
	}
	d := direct(t, tok)
	for _, name := range []string{"gen", "imp"} {
		h := d.find(name)
		attrs, err := d.ctx.GetAttributeValue(d.s, h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_SENSITIVE, nil), p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
			p11.NewAttribute(p11.CKA_PRIVATE, nil), p11.NewAttribute(p11.CKA_TOKEN, nil),
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []byte{1, 0, 1, 1}
		for i, a := range attrs {
			if a.Value[0] != want[i] {
				t.Errorf("%s: attribute %#x = %d, want %d", name, a.Type, a.Value[0], want[i])
			}
		}
		_, err = d.ctx.GetAttributeValue(d.s, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
		if !strings.Contains(fmt.Sprint(err), "CKR_ATTRIBUTE_SENSITIVE") {
			t.Errorf("%s: reading CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", name, err)
		}
	}
	list, err := p.Keys(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "gen" || list[1].Name != "imp" {
		t.Errorf("list: %+v %v", list, err)
	}
	if err := p.DeleteKey(ctx, "gen"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Key(ctx, "gen"); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("after delete: %v", err)
	}
}

// TestWrappedImport: a key wrapped under an AES key in the token is
// unwrapped inside it, through the whole path.
func TestWrappedImport(t *testing.T) {
	p, tok := newToken(t, nil)
	ctx := context.Background()
	d := direct(t, tok)
	// An AES key-encryption key, and the HMAC key wrapped under it. The
	// HMAC key is a temporary extractable session object made only to be
	// wrapped; a real deployment wraps elsewhere.
	kek, err := d.ctx.GenerateKey(d.s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_TOKEN, true), p11.NewAttribute(p11.CKA_LABEL, "kek"),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32), p11.NewAttribute(p11.CKA_WRAP, true),
		p11.NewAttribute(p11.CKA_UNWRAP, true), p11.NewAttribute(p11.CKA_PRIVATE, true),
	})
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte("wrapped-hmac-key"), 4) // 64 bytes
	tmp, err := d.ctx.CreateObject(d.s, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY), p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_TOKEN, false), p11.NewAttribute(p11.CKA_EXTRACTABLE, true),
		p11.NewAttribute(p11.CKA_VALUE, secret),
	})
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := d.ctx.WrapKey(d.s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, tmp)
	if err != nil {
		t.Fatal(err)
	}
	d.ctx.DestroyObject(d.s, tmp)

	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ImportWrappedKey(ctx, "hsm", "unwrapped", "kek", wrapped); err != nil {
		t.Fatal(err)
	}
	for _, alg := range softHSMAlgorithms {
		tag, err := c.MAC(ctx, "unwrapped", alg, []byte("msg"))
		if err != nil || !bytes.Equal(tag, reference(alg, secret, []byte("msg"))) {
			t.Errorf("%s: %x %v", alg, tag, err)
		}
	}
	// A wrapped key of the wrong length, and an HMAC key named as the
	// wrapping key, are the caller's mistakes: invalid_argument, and the
	// token stays healthy. They used to be "unavailable", which told the
	// caller to retry and marked the provider down.
	if _, err := c.ImportWrappedKey(ctx, "hsm", "bad", "kek", wrapped[:len(wrapped)-1]); !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("a wrapped key one byte short: %v, want invalid_argument", err)
	}
	if _, err := c.ImportWrappedKey(ctx, "hsm", "bad", "unwrapped", wrapped); !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("an HMAC key as the wrapping key: %v, want invalid_argument", err)
	}
	if st, err := c.Status(ctx); err != nil {
		t.Fatal(err)
	} else {
		for _, ps := range st.Providers {
			if !ps.Healthy {
				t.Errorf("provider %s unhealthy after rejected unwraps: %s", ps.Name, ps.Error)
			}
		}
	}
	if _, err := c.ImportWrappedKey(ctx, "soft", "x", "kek", wrapped); !errors.Is(err, client.ErrNotSupported) {
		t.Errorf("software provider unwrapping: %v", err)
	}
}

// TestOtherToolsKeys: keys made by pkcs11-tool are found by label and by
// id. Both entries name the object; its label alone, which an entry
// claims, does not reach it.
func TestOtherToolsKeys(t *testing.T) {
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Fatalf("pkcs11-tool (Debian package opensc) is needed: %v", err)
	}
	p, tok := newToken(t, nil)
	ctx := context.Background()
	out, err := exec.Command("pkcs11-tool", "--module", softhsm.Module, "--token-label", tok.Label, "--login", "--pin", tok.PIN,
		"--keygen", "--key-type", "GENERIC:64", "--label", "made-elsewhere", "--id", "0a0b", "--sensitive", "--private").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v: %s", err, out)
	}
	a := agenttest.Start(t, agenttest.Options{
		Providers: []providers.Provider{p},
		Keys: []agent.KeyConfig{
			{Name: "by-id", Provider: "hsm", Ref: "pkcs11:token=" + tok.Label + ";id=%0a%0b", Policy: agent.OwnerPolicy(uint32(os.Geteuid()))},
			{Name: "by-label", Provider: "hsm", Ref: "made-elsewhere", Policy: agent.OwnerPolicy(uint32(os.Geteuid()))},
		},
	})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	byLabel, err := c.MAC(ctx, "by-label", client.SHA256, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.MAC(ctx, "made-elsewhere", client.SHA256, []byte("m")); !errors.Is(err, client.ErrKeyNotFound) {
		t.Errorf("the object by its label, which entries claim: %v", err)
	}
	byID, err := c.MAC(ctx, "by-id", client.SHA256, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(byLabel, byID) {
		t.Error("the same key by label and by id gives different tags")
	}
	if err := c.VerifyMAC(ctx, "by-id", client.SHA512, []byte("m"), mustMAC(t, c, "by-label", client.SHA512)); err != nil {
		t.Errorf("verify: %v", err)
	}
}

func mustMAC(t *testing.T, c *client.Client, key string, alg client.Algorithm) []byte {
	t.Helper()
	tag, err := c.MAC(context.Background(), key, alg, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	return tag
}

func TestUnsupportedAtOpen(t *testing.T) {
	p, _ := newToken(t, nil)
	ctx := context.Background()
	// A 32-byte key is too short for SHA-384 and SHA-512 on SoftHSM,
	// which says so at C_SignInit: the provider says it at NewMAC.
	p.GenerateKey(ctx, "short", 32)
	k, err := p.Key(ctx, "short")
	if err != nil {
		t.Fatal(err)
	}
	for _, alg := range []providers.Algorithm{providers.SHA384, providers.SHA512, providers.SHA512_256, providers.SHA3_256} {
		if _, err := k.NewMAC(ctx, alg); !errors.Is(err, providers.ErrUnsupportedAlgorithm) {
			t.Errorf("%s on a 32-byte key: %v", alg, err)
		}
	}
	if _, err := k.NewMAC(ctx, providers.SHA256); err != nil {
		t.Error(err)
	}
}

// TestThousandsOfContextsFewSessions: small contexts buffer and hold no
// session, so 3000 open at once need only the pool's two.
func TestThousandsOfContextsFewSessions(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.Sessions = 2 })
	ctx := context.Background()
	secret := []byte("many-contexts-key")
	p.ImportKey(ctx, "k", secret)
	k, _ := p.Key(ctx, "k")
	var macs []providers.MAC
	for i := range 3000 {
		m, err := k.NewMAC(ctx, providers.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		m.Update(ctx, []byte(fmt.Sprint(i)))
		macs = append(macs, m)
	}
	for i, m := range macs {
		tag, err := m.Finalize(ctx)
		if err != nil || !bytes.Equal(tag, reference(providers.SHA256, secret, []byte(fmt.Sprint(i)))) {
			t.Fatalf("context %d: %x %v", i, tag, err)
		}
	}
}

// TestSessionWait: a request that finds every session busy waits, and
// gives up at the configured wait or the caller's context, saying why. A
// streaming context past its caller's share of kept sessions does not
// wait: it buffers (see TestStreamingContextsKeepAShare).
func TestSessionWait(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) {
		c.Sessions = 2
		c.SessionWait = 200 * time.Millisecond
		c.BufferBytes = 16
	})
	ctx := context.Background()
	p.ImportKey(ctx, "k", []byte("session-wait"))
	k, _ := p.Key(ctx, "k")
	big := make([]byte, 100)
	streaming, _ := k.NewMAC(ctx, providers.SHA256)
	if err := streaming.Update(ctx, big); err != nil { // keeps one session
		t.Fatal(err)
	}
	buffering, _ := k.NewMAC(ctx, providers.SHA256)
	start := time.Now()
	if err := buffering.Update(ctx, big); err != nil {
		t.Fatalf("a second streaming context past its caller's share: %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("a context past its caller's share waited %s", d)
	}
	release := pkcs11.TakeSession(t, p) // the other, as a long call would
	oneShot := func(ctx context.Context) error {
		_, err := k.(providers.OneShot).SumMAC(ctx, providers.SHA256, []byte("x"), nil)
		return err
	}
	start = time.Now()
	if err := oneShot(ctx); !errors.Is(err, providers.ErrUnavailable) || !strings.Contains(err.Error(), "no PKCS#11 session free within 200ms") {
		t.Errorf("a one-shot with every session busy: %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("gave up after %s, before the configured wait", d)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := oneShot(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("with a caller's deadline: %v", err)
	}
	// A session given back goes to the next.
	release()
	if err := oneShot(ctx); err != nil {
		t.Errorf("after a session came back: %v", err)
	}
	want := hmac.New(sha256.New, []byte("session-wait"))
	want.Write(big)
	for _, m := range []providers.MAC{streaming, buffering} {
		if tag, err := m.Finalize(ctx); err != nil || !bytes.Equal(tag, want.Sum(nil)) {
			t.Errorf("Finalize: %x, %v", tag, err)
		}
	}
}

func TestCopyCap(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.MaxCopyBytes = 1 << 20 })
	ctx := context.Background()
	secret := []byte("copy-cap")
	p.ImportKey(ctx, "k", secret)
	k, _ := p.Key(ctx, "k")
	m, _ := k.NewMAC(ctx, providers.SHA256)
	chunk := bytes.Repeat([]byte{7}, 300<<10)
	var all []byte
	for i := range 4 { // 1.2 MiB: past the cap on the fourth
		m.Update(ctx, chunk)
		all = append(all, chunk...)
		c, err := m.Copy(ctx)
		if i < 3 {
			if err != nil {
				t.Fatalf("copy at %d bytes: %v", len(all), err)
			}
			c.Update(ctx, []byte("x"))
			got, err := c.Finalize(ctx)
			if err != nil || !bytes.Equal(got, reference(providers.SHA256, secret, append(append([]byte(nil), all...), 'x'))) {
				t.Fatalf("copy at %d bytes: wrong tag %v", len(all), err)
			}
			continue
		}
		if !errors.Is(err, providers.ErrLimit) || !strings.Contains(err.Error(), "max_copy_bytes") {
			t.Errorf("copy past the cap: %v", err)
		}
	}
	// The context itself still works.
	got, err := m.Finalize(ctx)
	if err != nil || !bytes.Equal(got, reference(providers.SHA256, secret, all)) {
		t.Errorf("finalize past the copy cap: %v", err)
	}
}

func TestRandomCopiesStreaming(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.BufferBytes = 100 })
	ctx := context.Background()
	secret := []byte("random-copies")
	p.ImportKey(ctx, "k", secret)
	k, _ := p.Key(ctx, "k")
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 20 {
		m, _ := k.NewMAC(ctx, providers.SHA512)
		var input []byte
		type branch struct {
			m providers.MAC
			n int
		}
		var branches []branch
		for range 10 {
			p := make([]byte, rng.IntN(300))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			m.Update(ctx, p)
			input = append(input, p...)
			if rng.IntN(2) == 0 {
				c, err := m.Copy(ctx)
				if err != nil {
					t.Fatal(err)
				}
				branches = append(branches, branch{c, len(input)})
			}
		}
		got, _ := m.Finalize(ctx)
		if !bytes.Equal(got, reference(providers.SHA512, secret, input)) {
			t.Fatalf("round %d: original wrong", round)
		}
		for _, b := range branches {
			b.m.Update(ctx, []byte("tail"))
			got, err := b.m.Finalize(ctx)
			if err != nil || !bytes.Equal(got, reference(providers.SHA512, secret, append(append([]byte(nil), input[:b.n]...), "tail"...))) {
				t.Fatalf("round %d: copy at %d wrong: %v", round, b.n, err)
			}
		}
	}
}

func TestWrongPIN(t *testing.T) {
	tok := softhsm.Require(t, "wrongpin")
	_, err := pkcs11.Open(context.Background(), pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte("0000")})
	if !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("wrong PIN: %v", err)
	}
	_, err = pkcs11.Open(context.Background(), pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: "no-such-token", PIN: []byte("1234")})
	if err == nil || !strings.Contains(err.Error(), `no token with label "no-such-token"`) {
		t.Errorf("missing token: %v", err)
	}
}

func TestConcurrentStreamsUnderRace(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.Sessions = 8; c.BufferBytes = 64 })
	ctx := context.Background()
	secret := []byte("race")
	p.ImportKey(ctx, "k", secret)
	k, _ := p.Key(ctx, "k")
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			msg := bytes.Repeat([]byte{byte(g)}, 1000)
			for range 5 {
				m, err := k.NewMAC(ctx, providers.SHA256)
				if err != nil {
					t.Error(err)
					return
				}
				m.Update(ctx, msg[:500])
				m.Update(ctx, msg[500:])
				if err := m.Verify(ctx, reference(providers.SHA256, secret, msg)); err != nil {
					t.Errorf("goroutine %d: %v", g, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestRetainedInputIsReleasedOnce hands every update to a tree of copies
// in a frame.Buffer whose caller's reference is dropped at once, scribbles
// on each buffer as its last reference goes (as a reused buffer would be),
// and checks that every tag is still right and every buffer came back (a
// second release would panic).
func TestRetainedInputIsReleasedOnce(t *testing.T) {
	for _, maxCopy := range []int64{1 << 20, 4 << 10} { // the smaller cap drops logs midway
		t.Run(fmt.Sprint("cap ", maxCopy), func(t *testing.T) { retainedInputReleasedOnce(t, maxCopy) })
	}
}

func retainedInputReleasedOnce(t *testing.T, maxCopy int64) {
	p, _ := newToken(t, func(c *pkcs11.Config) { c.BufferBytes = 100; c.MaxCopyBytes = maxCopy; c.Sessions = 64 })
	ctx := context.Background()
	secret := []byte("retained-input")
	p.ImportKey(ctx, "k", secret)
	k, _ := p.Key(ctx, "k")
	rng := rand.New(rand.NewPCG(5, 6))
	// scribble is what a reused frame's memory would undergo.
	scribble := func(b []byte) {
		for i := range b {
			b[i] = 0xee
		}
	}
	var handed []*frame.Buffer
	type branch struct {
		m     providers.MAC
		input []byte
	}
	for round := range 10 {
		m, _ := k.NewMAC(ctx, providers.SHA256)
		live := []*branch{{m: m}}
		for range 30 {
			b := live[rng.IntN(len(live))]
			switch rng.IntN(4) {
			case 0:
				c, err := b.m.Copy(ctx)
				if errors.Is(err, providers.ErrLimit) {
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				live = append(live, &branch{m: c, input: slices.Clone(b.input)})
			default:
				data := make([]byte, 1+rng.IntN(1000))
				for i := range data {
					data[i] = byte(rng.Uint32())
				}
				b.input = append(b.input, data...)
				buf := frame.New(data, scribble)
				handed = append(handed, buf)
				if err := b.m.(providers.Retainer).UpdateRetained(ctx, data, buf); err != nil {
					t.Fatal(err)
				}
				buf.Release()
			}
		}
		for i, b := range live {
			if i%3 == 2 {
				b.m.Close()
				continue
			}
			got, err := b.m.Finalize(ctx)
			if err != nil || !bytes.Equal(got, reference(providers.SHA256, secret, b.input)) {
				t.Fatalf("cap %d, round %d: branch %d: wrong tag (%v)", maxCopy, round, i, err)
			}
		}
	}
	for i, buf := range handed {
		if buf.Held() {
			t.Fatalf("cap %d: buffer %d of %d still held after every context ended", maxCopy, i, len(handed))
		}
	}
}
