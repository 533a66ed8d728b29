package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// countingKeystore counts how often the agent reads a key's versions.
type countingKeystore struct {
	*software.Provider
	reads atomic.Int64
}

func (c *countingKeystore) Versions(ctx context.Context, name string) ([]providers.VersionInfo, error) {
	c.reads.Add(1)
	return c.Provider.Versions(ctx, name)
}

// versionedProvider is a provider the agent's version tests run on.
type versionedProvider interface {
	providers.Provider
	providers.Importer
	providers.Versioner
}

// versionsProviderCase opens a new provider for one test.
type versionsProviderCase struct {
	name string
	open func(t *testing.T) versionedProvider
}

// versionsProviders are the providers the agent's version tests run on:
// the software keystore here, SoftHSM2 and swtpm where cgo is.
var versionsProviders = []versionsProviderCase{
	{"soft", func(t *testing.T) versionedProvider {
		p, err := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}},
}

// onEveryProvider runs test once on each provider of versionsProviders.
func onEveryProvider(t *testing.T, test func(t *testing.T, p versionedProvider)) {
	for _, vp := range versionsProviders {
		t.Run(vp.name, func(t *testing.T) { test(t, vp.open(t)) })
	}
}

type versionsFixture struct {
	a     *agent.Agent
	soft  *countingKeystore // nil when the fixture is on another provider
	prov  versionedProvider
	s     *agent.Session
	mu    sync.Mutex
	now   time.Time
	uses  []agent.Use
	usesM sync.Mutex
}

func (f *versionsFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *versionsFixture) set(t time.Time) {
	f.mu.Lock()
	f.now = t
	f.mu.Unlock()
}

func newVersionsFixture(t *testing.T, keys ...agent.KeyConfig) *versionsFixture {
	t.Helper()
	soft, err := software.Open("soft", filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	counting := &countingKeystore{Provider: soft}
	f := newVersionsFixtureOn(t, counting, keys...)
	f.soft = counting
	return f
}

// newVersionsFixtureOn is an agent on p alone, with a clock the test
// moves; the agent closes p.
func newVersionsFixtureOn(t *testing.T, p versionedProvider, keys ...agent.KeyConfig) *versionsFixture {
	t.Helper()
	f := &versionsFixture{prov: p, now: time.Now()}
	var err error
	f.a, err = agent.New(agent.Options{
		Providers:      []providers.Provider{p},
		Keys:           keys,
		VersionRefresh: -1,
		Now:            f.clock,
		Observe: func(u agent.Use) {
			f.usesM.Lock()
			f.uses = append(f.uses, u)
			f.usesM.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.a.Close() })
	f.s = f.a.NewSession(owner)
	t.Cleanup(f.s.Close)
	return f
}

func (f *versionsFixture) lastUse() agent.Use {
	f.usesM.Lock()
	defer f.usesM.Unlock()
	return f.uses[len(f.uses)-1]
}

func TestSessionVersions(t *testing.T) { onEveryProvider(t, sessionVersions) }

func sessionVersions(t *testing.T, p versionedProvider) {
	ctx := context.Background()
	f := newVersionsFixtureOn(t, p)
	if _, err := f.prov.ImportKey(ctx, "k", []byte("one")); err != nil {
		t.Fatal(err)
	}
	msg := []byte("message")
	tag1, v, err := f.s.MACVersion(ctx, []byte("k"), providers.SHA256, msg, nil, nil)
	if err != nil || v != 1 {
		t.Fatalf("MAC before rotation: version %d, %v", v, err)
	}
	if err := f.s.Open(ctx, 1, []byte("k"), providers.SHA256); err != nil {
		t.Fatal(err)
	}
	if _, err := f.a.RotateKey(ctx, owner, "", "k", []byte("two"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Copy(ctx, 1, 2); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint32{1, 2} {
		f.s.Update(ctx, id, msg, nil)
		tag, v, err := f.s.FinalizeVersion(ctx, id, nil)
		if err != nil || v != 1 || !bytes.Equal(tag, tag1) {
			t.Errorf("context %d opened before the rotation: version %d, %v", id, v, err)
		}
	}
	// A context opened after it verifies version 1's tag, audited as
	// satisfied by a previous version.
	if err := f.s.Open(ctx, 3, []byte("k"), providers.SHA256); err != nil {
		t.Fatal(err)
	}
	f.s.Update(ctx, 3, msg, nil)
	if v, err := f.s.VerifyVersion(ctx, 3, tag1); err != nil || v != 1 {
		t.Errorf("verify of version 1's tag: version %d, %v", v, err)
	}
	if u := f.lastUse(); u.Version != 1 || !u.Previous || u.Operation != "verify" {
		t.Errorf("audited %+v, want version 1 marked previous", u)
	}
	if v, err := f.s.VerifyMACVersion(ctx, []byte("k"), providers.SHA256, msg, nil, tag1); err != nil || v != 1 {
		t.Errorf("one-shot verify of version 1's tag: version %d, %v", v, err)
	}
	if u := f.lastUse(); u.Version != 1 || !u.Previous {
		t.Errorf("audited %+v, want version 1 marked previous", u)
	}
	tag2, v, _ := f.s.MACVersion(ctx, []byte("k"), providers.SHA256, msg, nil, nil)
	if v != 2 {
		t.Fatalf("MAC after rotation: version %d", v)
	}
	if v, err := f.s.VerifyMACVersion(ctx, []byte("k"), providers.SHA256, msg, nil, tag2); err != nil || v != 2 {
		t.Errorf("verify of version 2's tag: version %d, %v", v, err)
	}
	if u := f.lastUse(); u.Previous {
		t.Errorf("the current version's verification marked previous: %+v", u)
	}
}

// A caller trying version numbers gets key_not_found, and does not make
// the agent read the provider's versions on every try.
func TestGuessedVersionsAreRemembered(t *testing.T) {
	ctx := context.Background()
	f := newVersionsFixture(t)
	f.soft.ImportKey(ctx, "k", []byte("one"))
	if _, _, err := f.s.MACVersion(ctx, []byte("k"), providers.SHA256, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	before := f.soft.reads.Load()
	for range 100 {
		if _, err := f.s.MAC(ctx, []byte("k@7"), providers.SHA256, nil, nil); !errors.Is(err, providers.ErrKeyNotFound) {
			t.Fatalf("k@7 = %v, want ErrKeyNotFound", err)
		}
	}
	if n := f.soft.reads.Load() - before; n > 1 {
		t.Errorf("100 tries of a missing version read the versions %d times", n)
	}
	// A rotation through the agent makes the version at once.
	if _, err := f.a.RotateKey(ctx, owner, "", "k", nil, 0); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"k@2", "k@1"} {
		if _, err := f.s.MAC(ctx, []byte(name), providers.SHA256, nil, nil); err != nil {
			t.Errorf("%s after the rotation: %v", name, err)
		}
	}
}

// The grace of a previous version runs on the agent's clock: past it the
// version stops verifying and the agent retires it in the provider.
func TestVersionGrace(t *testing.T) { onEveryProvider(t, versionGrace) }

func versionGrace(t *testing.T, p versionedProvider) {
	ctx := context.Background()
	f := newVersionsFixtureOn(t, p, agent.KeyConfig{
		Name: "g", Provider: p.Name(), Policy: agent.OwnerPolicy(uint32(os.Geteuid())), VerifyGrace: time.Hour,
	})
	if _, err := f.prov.ImportKey(ctx, "g", []byte("one")); err != nil {
		t.Fatal(err)
	}
	tag1, _, err := f.s.MACVersion(ctx, []byte("g"), providers.SHA256, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.a.RotateKey(ctx, owner, "", "g", nil, 0); err != nil {
		t.Fatal(err)
	}
	rotated := time.Now()
	f.set(rotated.Add(59 * time.Minute))
	f.a.RefreshVersions(ctx)
	if err := f.s.VerifyMAC(ctx, []byte("g"), providers.SHA256, nil, tag1); err != nil {
		t.Errorf("within the grace: %v", err)
	}
	f.set(rotated.Add(61 * time.Minute))
	f.a.RefreshVersions(ctx)
	if err := f.s.VerifyMAC(ctx, []byte("g"), providers.SHA256, nil, tag1); !errors.Is(err, providers.ErrInvalidSignature) {
		t.Errorf("past the grace = %v, want ErrInvalidSignature", err)
	}
	vs, err := f.prov.Versions(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if vs[0].State != providers.VersionRetired {
		t.Errorf("version 1 past its grace is %s, want retired by the agent", vs[0].State)
	}
}

// A configured key whose object is NAME@N is that version alone, with
// the entry's policy, and it claims the key from its own name.
func TestConfiguredVersion(t *testing.T) { onEveryProvider(t, configuredVersion) }

func configuredVersion(t *testing.T, p versionedProvider) {
	ctx := context.Background()
	me := agent.OwnerPolicy(uint32(os.Geteuid()))
	f := newVersionsFixtureOn(t, p,
		agent.KeyConfig{Name: "current", Provider: p.Name(), Ref: "k", Policy: me},
		agent.KeyConfig{Name: "legacy", Provider: p.Name(), Ref: "k@1", Policy: me},
	)
	if _, err := f.prov.ImportKey(ctx, "k", []byte("one")); err != nil {
		t.Fatal(err)
	}
	tag1, _, _ := f.s.MACVersion(ctx, []byte("current"), providers.SHA256, nil, nil, nil)
	if _, err := f.a.RotateKey(ctx, owner, "", "current", nil, 0); err != nil {
		t.Fatal(err)
	}
	tag, v, err := f.s.MACVersion(ctx, []byte("legacy"), providers.SHA256, nil, nil, nil)
	if err != nil || v != 1 || !bytes.Equal(tag, tag1) {
		t.Errorf("legacy (k@1) after a rotation: version %d, %v", v, err)
	}
	tag2, v, _ := f.s.MACVersion(ctx, []byte("current"), providers.SHA256, nil, nil, nil)
	if v != 2 {
		t.Errorf("current after a rotation: version %d", v)
	}
	if err := f.s.VerifyMAC(ctx, []byte("legacy"), providers.SHA256, nil, tag2); !errors.Is(err, providers.ErrInvalidSignature) {
		t.Errorf("legacy verifying version 2's tag = %v, want ErrInvalidSignature", err)
	}
	if _, err := f.s.MAC(ctx, []byte("k"), providers.SHA256, nil, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("the key by its own name = %v, want ErrKeyNotFound: configured entries claim it", err)
	}
	if err := f.a.RetireVersion(ctx, owner, "", "current", 1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.MAC(ctx, []byte("legacy"), providers.SHA256, nil, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("legacy after version 1 was retired = %v, want ErrKeyNotFound", err)
	}
}

// BenchmarkVersionsOneShot is the cost of live versions in the agent, no
// socket: a MAC and a verification of the oldest live version's tag,
// with one, two and three versions live.
func BenchmarkVersionsOneShot(b *testing.B) {
	ctx := context.Background()
	soft, err := software.Open("soft", filepath.Join(b.TempDir(), "keys"))
	if err != nil {
		b.Fatal(err)
	}
	a, err := agent.New(agent.Options{Providers: []providers.Provider{soft}, VersionRefresh: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	s := a.NewSession(owner)
	defer s.Close()
	soft.ImportKey(ctx, "k", []byte("one"))
	msg := make([]byte, 64)
	oldest, _, err := s.MACVersion(ctx, []byte("k"), providers.SHA256, msg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	for live := 1; live <= 3; live++ {
		if live > 1 {
			if _, err := a.RotateKey(ctx, owner, "", "k", nil, 0); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("MAC/live=%d", live), func(b *testing.B) {
			dst := make([]byte, 0, 64)
			for b.Loop() {
				s.MAC(ctx, []byte("k"), providers.SHA256, msg, dst)
			}
		})
		b.Run(fmt.Sprintf("VerifyOldest/live=%d", live), func(b *testing.B) {
			for b.Loop() {
				if err := s.VerifyMAC(ctx, []byte("k"), providers.SHA256, msg, oldest); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// NAME@N of a configured entry that names one version reaches that
// version only.
func TestConfiguredVersionPinnedAgain(t *testing.T) {
	ctx := context.Background()
	me := agent.OwnerPolicy(uint32(os.Geteuid()))
	f := newVersionsFixture(t, agent.KeyConfig{Name: "legacy", Provider: "soft", Ref: "k@1", Policy: me})
	f.soft.ImportKey(ctx, "k", []byte("one"))
	f.soft.RotateKey(ctx, "k", nil, 0)
	if _, err := f.s.MAC(ctx, []byte("legacy@1"), providers.SHA256, nil, nil); err != nil {
		t.Errorf("legacy@1: %v", err)
	}
	if _, err := f.s.MAC(ctx, []byte("legacy@2"), providers.SHA256, nil, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("legacy@2 = %v, want ErrKeyNotFound: the entry names version 1 alone", err)
	}
}
