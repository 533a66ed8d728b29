package providertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Versioned is a provider that keeps key versions, as the versions suite
// needs it.
type Versioned interface {
	providers.Provider
	providers.Versioner
}

// VersionsOptions tunes [Versions] to a provider.
type VersionsOptions struct {
	// Algorithm is the one the suite computes tags with (default SHA-256).
	Algorithm providers.Algorithm
	// Legacy makes a key the way releases before versions did, holding
	// secret. When nil, the suite uses the provider's ImportKey.
	Legacy func(t testing.TB, name string, secret []byte)
	// Second is another provider on the same store (for PKCS#11, another
	// provider instance on the same token), or nil. Concurrent rotations
	// then run through both, and each must see the other's versions.
	Second Versioned
	// Reopen closes the provider and returns a new one on the same store.
	// It runs last; when nil, the reopen test is not run.
	Reopen func(t testing.TB) Versioned
	// Rotators is how many goroutines rotate one key at once (default 4),
	// split between the provider and Second.
	Rotators int
}

// Versions runs the key-versions part of the conformance suite on p, as
// subtests of t. p must also be an Importer; generation is tested when it
// is a Generator.
func Versions(t *testing.T, p Versioned, o VersionsOptions) {
	if o.Algorithm == 0 {
		o.Algorithm = providers.SHA256
	}
	if o.Rotators == 0 {
		o.Rotators = 4
	}
	v := &versionsRunner{p: p, o: o}
	t.Run("RotateGenerated", v.testRotateGenerated)
	t.Run("RotateImported", v.testRotateImported)
	t.Run("Retire", v.testRetire)
	t.Run("Missing", v.testMissing)
	t.Run("Legacy", v.testLegacy)
	t.Run("Deleted", v.testDeleted)
	t.Run("ConcurrentRotations", v.testConcurrentRotations)
	if o.Second != nil {
		t.Run("SecondSeesRotation", v.testSecondSees)
	}
	if o.Reopen != nil {
		t.Run("Reopened", v.testReopened)
	}
}

type versionsRunner struct {
	p Versioned
	o VersionsOptions
}

var versionsMessage = []byte("versions conformance message")

func (v *versionsRunner) importer(t testing.TB) providers.Importer {
	t.Helper()
	imp, ok := v.p.(providers.Importer)
	if !ok {
		t.Fatalf("%T is not a providers.Importer", v.p)
	}
	return imp
}

func (v *versionsRunner) importKey(t testing.TB, name string, secret []byte) {
	t.Helper()
	if _, err := v.importer(t).ImportKey(context.Background(), name, secret); err != nil {
		t.Fatalf("import %s: %v", name, err)
	}
}

// tagOf computes the tag of the suite's message with k.
func (v *versionsRunner) tagOf(t testing.TB, k providers.Key) []byte {
	t.Helper()
	ctx := context.Background()
	m, err := k.NewMAC(ctx, v.o.Algorithm)
	if err != nil {
		t.Fatalf("NewMAC: %v", err)
	}
	if err := m.Update(ctx, versionsMessage); err != nil {
		m.Close()
		t.Fatalf("Update: %v", err)
	}
	tag, err := m.Finalize(ctx)
	if err != nil {
		t.Fatalf("Finalize: %v", err)
	}
	return tag
}

// versionTag is the tag of version n of name in p.
func (v *versionsRunner) versionTag(t testing.TB, p Versioned, name string, n int) []byte {
	t.Helper()
	k, err := p.KeyVersion(context.Background(), name, n)
	if err != nil {
		t.Fatalf("KeyVersion(%s, %d): %v", name, n, err)
	}
	return v.tagOf(t, k)
}

func (v *versionsRunner) currentTag(t testing.TB, p Versioned, name string) []byte {
	t.Helper()
	k, err := p.Key(context.Background(), name)
	if err != nil {
		t.Fatalf("Key(%s): %v", name, err)
	}
	return v.tagOf(t, k)
}

// verifies reports whether version n of name verifies tag.
func (v *versionsRunner) verifies(t testing.TB, name string, n int, tag []byte) bool {
	t.Helper()
	ctx := context.Background()
	k, err := v.p.KeyVersion(ctx, name, n)
	if err != nil {
		t.Fatalf("KeyVersion(%s, %d): %v", name, n, err)
	}
	m, err := k.NewMAC(ctx, v.o.Algorithm)
	if err != nil {
		t.Fatalf("NewMAC: %v", err)
	}
	if err := m.Update(ctx, versionsMessage); err != nil {
		m.Close()
		t.Fatalf("Update: %v", err)
	}
	err = m.Verify(ctx, tag)
	if err != nil && !errors.Is(err, providers.ErrInvalidSignature) {
		t.Fatalf("Verify: %v", err)
	}
	return err == nil
}

func versions(t testing.TB, p Versioned, name string) []providers.VersionInfo {
	t.Helper()
	vs, err := p.Versions(context.Background(), name)
	if err != nil {
		t.Fatalf("Versions(%s): %v", name, err)
	}
	return vs
}

// states is the versions as "1:previous 2:current", for comparing.
func states(vs []providers.VersionInfo) string {
	var b bytes.Buffer
	for i, vi := range vs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d:%s", vi.Version, vi.State)
	}
	return b.String()
}

func wantStates(t testing.TB, p Versioned, name, want string) []providers.VersionInfo {
	t.Helper()
	vs := versions(t, p, name)
	if got := states(vs); got != want {
		t.Fatalf("versions of %s: %s, want %s", name, got, want)
	}
	return vs
}

func (v *versionsRunner) rotate(t testing.TB, p Versioned, name string, secret []byte) providers.VersionInfo {
	t.Helper()
	vi, err := p.RotateKey(context.Background(), name, secret, 0)
	if err != nil {
		t.Fatalf("RotateKey(%s): %v", name, err)
	}
	if vi.State != providers.VersionCurrent || vi.Created.IsZero() {
		t.Fatalf("RotateKey(%s) = %+v, want a current version with its creation time", name, vi)
	}
	return vi
}

func secretFor(name string, n int) []byte {
	return []byte(fmt.Sprintf("secret of %s version %d, long enough for every digest size", name, n))
}

func (v *versionsRunner) testRotateGenerated(t *testing.T) {
	gen, ok := v.p.(providers.Generator)
	if !ok {
		t.Skipf("%T cannot generate keys", v.p)
	}
	ctx := context.Background()
	name := "versions-generated"
	if _, err := gen.GenerateKey(ctx, name, 0); err != nil {
		t.Fatal(err)
	}
	wantStates(t, v.p, name, "1:current")
	tag1 := v.currentTag(t, v.p, name)
	vi := v.rotate(t, v.p, name, nil)
	if vi.Version != 2 {
		t.Fatalf("first rotation made version %d, want 2", vi.Version)
	}
	vs := wantStates(t, v.p, name, "1:previous 2:current")
	if vs[0].Superseded.IsZero() || vs[0].Superseded.Before(vs[0].Created) {
		t.Errorf("version 1 superseded at %v (created %v)", vs[0].Superseded, vs[0].Created)
	}
	if !vs[1].Superseded.IsZero() || !vs[1].Retired.IsZero() {
		t.Errorf("current version 2: %+v", vs[1])
	}
	tag2 := v.currentTag(t, v.p, name)
	if bytes.Equal(tag1, tag2) {
		t.Fatal("the generated version 2 computes version 1's tags")
	}
	if got := v.versionTag(t, v.p, name, 1); !bytes.Equal(got, tag1) {
		t.Errorf("version 1 after rotation: %x, want %x", got, tag1)
	}
	if got := v.versionTag(t, v.p, name, 2); !bytes.Equal(got, tag2) {
		t.Errorf("version 2: %x, want the current tag %x", got, tag2)
	}
	if !v.verifies(t, name, 1, tag1) || v.verifies(t, name, 1, tag2) || !v.verifies(t, name, 2, tag2) || v.verifies(t, name, 2, tag1) {
		t.Error("each version must verify its own tag and only that")
	}
}

func (v *versionsRunner) testRotateImported(t *testing.T) {
	name := "versions-imported"
	v.importKey(t, name, secretFor(name, 1))
	for n := 2; n <= 3; n++ {
		if vi := v.rotate(t, v.p, name, secretFor(name, n)); vi.Version != n {
			t.Fatalf("rotation made version %d, want %d", vi.Version, n)
		}
	}
	wantStates(t, v.p, name, "1:previous 2:previous 3:current")
	for n := 1; n <= 3; n++ {
		want := reference(v.o.Algorithm, secretFor(name, n), versionsMessage)
		if got := v.versionTag(t, v.p, name, n); !bytes.Equal(got, want) {
			t.Errorf("version %d: %x, want crypto/hmac's %x", n, got, want)
		}
	}
	want := reference(v.o.Algorithm, secretFor(name, 3), versionsMessage)
	if got := v.currentTag(t, v.p, name); !bytes.Equal(got, want) {
		t.Errorf("Key(%s) computes %x, want version 3's %x", name, got, want)
	}
}

func (v *versionsRunner) testRetire(t *testing.T) {
	ctx := context.Background()
	name := "versions-retired"
	v.importKey(t, name, secretFor(name, 1))
	v.rotate(t, v.p, name, secretFor(name, 2))
	v.rotate(t, v.p, name, secretFor(name, 3))
	if err := v.p.RetireVersion(ctx, name, 3, false); !errors.Is(err, providers.ErrInvalidArgument) {
		t.Errorf("retiring the current version: %v, want ErrInvalidArgument", err)
	}
	if err := v.p.RetireVersion(ctx, name, 3, true); !errors.Is(err, providers.ErrInvalidArgument) {
		t.Errorf("destroying the current version: %v, want ErrInvalidArgument", err)
	}
	if err := v.p.RetireVersion(ctx, name, 4, false); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("retiring version 4 of 3: %v, want ErrKeyNotFound", err)
	}
	if err := v.p.RetireVersion(ctx, name, 1, false); err != nil {
		t.Fatal(err)
	}
	vs := wantStates(t, v.p, name, "1:retired 2:previous 3:current")
	if vs[0].Retired.IsZero() {
		t.Error("retired version 1 has no retirement time")
	}
	// A retired version is kept: the agent decides what it allows.
	want1 := reference(v.o.Algorithm, secretFor(name, 1), versionsMessage)
	if got := v.versionTag(t, v.p, name, 1); !bytes.Equal(got, want1) {
		t.Errorf("retired version 1: %x, want %x", got, want1)
	}
	if err := v.p.RetireVersion(ctx, name, 1, true); err != nil {
		t.Fatalf("destroying retired version 1: %v", err)
	}
	if err := v.p.RetireVersion(ctx, name, 2, true); err != nil {
		t.Fatalf("retiring and destroying version 2 at once: %v", err)
	}
	vs = wantStates(t, v.p, name, "1:destroyed 2:destroyed 3:current")
	if vs[1].Retired.IsZero() {
		t.Error("destroyed version 2 has no retirement time")
	}
	for n := 1; n <= 2; n++ {
		if _, err := v.p.KeyVersion(ctx, name, n); !errors.Is(err, providers.ErrKeyNotFound) {
			t.Errorf("KeyVersion of destroyed version %d: %v, want ErrKeyNotFound", n, err)
		}
	}
	want3 := reference(v.o.Algorithm, secretFor(name, 3), versionsMessage)
	if got := v.currentTag(t, v.p, name); !bytes.Equal(got, want3) {
		t.Errorf("current version after destroying the others: %x, want %x", got, want3)
	}
	// Numbers are never reused, even when the newest old version is gone.
	if vi := v.rotate(t, v.p, name, secretFor(name, 4)); vi.Version != 4 {
		t.Errorf("rotation after destroying versions made version %d, want 4", vi.Version)
	}
	wantStates(t, v.p, name, "1:destroyed 2:destroyed 3:previous 4:current")
	keys, err := v.p.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var found int
	for _, k := range keys {
		if k.Name == name {
			found++
		}
		if bytes.ContainsRune([]byte(k.Name), '@') {
			t.Errorf("Keys lists a version as a key: %q", k.Name)
		}
	}
	if found != 1 {
		t.Errorf("Keys lists %s %d times, want once: %v", name, found, keys)
	}
}

func (v *versionsRunner) testMissing(t *testing.T) {
	ctx := context.Background()
	name := "versions-missing"
	if _, err := v.p.Versions(ctx, name); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("Versions of a missing key: %v", err)
	}
	if _, err := v.p.RotateKey(ctx, name, secretFor(name, 1), 0); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("RotateKey of a missing key: %v", err)
	}
	if err := v.p.RetireVersion(ctx, name, 1, false); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("RetireVersion of a missing key: %v", err)
	}
	v.importKey(t, name, secretFor(name, 1))
	for _, n := range []int{-1, 0, 2} {
		if _, err := v.p.KeyVersion(ctx, name, n); !errors.Is(err, providers.ErrKeyNotFound) {
			t.Errorf("KeyVersion(%d) of a key with one version: %v, want ErrKeyNotFound", n, err)
		}
	}
}

func (v *versionsRunner) testLegacy(t *testing.T) {
	name := "versions-legacy"
	secret := secretFor(name, 1)
	if v.o.Legacy != nil {
		v.o.Legacy(t, name, secret)
	} else {
		v.importKey(t, name, secret)
	}
	want := reference(v.o.Algorithm, secret, versionsMessage)
	wantStates(t, v.p, name, "1:current")
	if got := v.currentTag(t, v.p, name); !bytes.Equal(got, want) {
		t.Fatalf("key made before versions: %x, want %x", got, want)
	}
	if got := v.versionTag(t, v.p, name, 1); !bytes.Equal(got, want) {
		t.Fatalf("version 1 of a key made before versions: %x, want %x", got, want)
	}
	v.rotate(t, v.p, name, secretFor(name, 2))
	wantStates(t, v.p, name, "1:previous 2:current")
	if got := v.versionTag(t, v.p, name, 1); !bytes.Equal(got, want) {
		t.Errorf("version 1 after rotation: %x, want its old tags %x", got, want)
	}
	if err := v.p.RetireVersion(context.Background(), name, 1, false); err != nil {
		t.Fatal(err)
	}
	wantStates(t, v.p, name, "1:retired 2:current")
}

// testDeleted deletes a key with several versions: every version goes,
// and a new key of the same name starts again at version 1.
func (v *versionsRunner) testDeleted(t *testing.T) {
	del, ok := v.p.(providers.Deleter)
	if !ok {
		t.Skipf("%T cannot delete keys", v.p)
	}
	ctx := context.Background()
	name := "versions-deleted"
	v.importKey(t, name, secretFor(name, 1))
	v.rotate(t, v.p, name, secretFor(name, 2))
	v.rotate(t, v.p, name, secretFor(name, 3))
	if err := v.p.RetireVersion(ctx, name, 1, true); err != nil {
		t.Fatal(err)
	}
	if err := del.DeleteKey(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := v.p.Versions(ctx, name); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("Versions of a deleted key: %v", err)
	}
	for n := 1; n <= 3; n++ {
		if _, err := v.p.KeyVersion(ctx, name, n); !errors.Is(err, providers.ErrKeyNotFound) {
			t.Errorf("KeyVersion(%d) of a deleted key: %v", n, err)
		}
	}
	if _, err := v.p.Key(ctx, name); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("Key of a deleted key: %v", err)
	}
	secret := []byte("a new key under an old name, long enough for every digest")
	v.importKey(t, name, secret)
	wantStates(t, v.p, name, "1:current")
	if got, want := v.currentTag(t, v.p, name), reference(v.o.Algorithm, secret, versionsMessage); !bytes.Equal(got, want) {
		t.Errorf("the new key computes %x, want %x", got, want)
	}
}

// testConcurrentRotations rotates one key from several goroutines, through
// both providers when there are two: no two rotations may get one number,
// and every number must reach the secret its rotation imported.
func (v *versionsRunner) testConcurrentRotations(t *testing.T) {
	name := "versions-concurrent"
	v.importKey(t, name, secretFor(name+"-rotation", 0))
	const perRotator = 3
	type made struct {
		version int
		secret  []byte
	}
	var (
		mu   sync.Mutex
		all  []made
		wg   sync.WaitGroup
		errs = make(chan error, v.o.Rotators*perRotator)
	)
	for g := range v.o.Rotators {
		p := v.p
		if v.o.Second != nil && g%2 == 1 {
			p = v.o.Second
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perRotator {
				secret := secretFor(name+"-rotation", 1+g*perRotator+i)
				vi, err := p.RotateKey(context.Background(), name, secret, 0)
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				all = append(all, made{vi.Version, secret})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent RotateKey: %v", err)
	}
	seen := map[int]bool{}
	for _, m := range all {
		if seen[m.version] {
			t.Fatalf("two rotations both made version %d", m.version)
		}
		seen[m.version] = true
	}
	vs := versions(t, v.p, name)
	if len(vs) != len(all)+1 {
		t.Fatalf("%d versions after %d rotations: %s", len(vs), len(all), states(vs))
	}
	var current []int
	for i, vi := range vs {
		// A rotation that failed may leave its number unused.
		if i > 0 && vi.Version <= vs[i-1].Version || vi.Version < 1 {
			t.Fatalf("versions %s are not in order", states(vs))
		}
		if vi.State == providers.VersionCurrent {
			current = append(current, vi.Version)
		}
	}
	if len(current) != 1 || current[0] != vs[len(vs)-1].Version {
		t.Fatalf("current versions %v of %s, want only the newest", current, states(vs))
	}
	readers := []Versioned{v.p}
	if v.o.Second != nil {
		readers = append(readers, v.o.Second)
	}
	for _, m := range all {
		want := reference(v.o.Algorithm, m.secret, versionsMessage)
		for i, p := range readers {
			if got := v.versionTag(t, p, name, m.version); !bytes.Equal(got, want) {
				t.Errorf("provider %d: version %d computes %x, not its rotation's %x", i, m.version, got, want)
			}
		}
	}
}

// testSecondSees rotates through one provider and reads through the
// other, which must see the new version at once and keep the old.
func (v *versionsRunner) testSecondSees(t *testing.T) {
	name := "versions-shared"
	v.importKey(t, name, secretFor(name, 1))
	before := versions(t, v.o.Second, name)
	if states(before) != "1:current" {
		t.Fatalf("second provider sees %s before the rotation", states(before))
	}
	// The second provider looks the key up before the rotation, as an
	// agent that was serving it would have.
	if got, want := v.currentTag(t, v.o.Second, name), reference(v.o.Algorithm, secretFor(name, 1), versionsMessage); !bytes.Equal(got, want) {
		t.Fatalf("second provider before rotation: %x, want %x", got, want)
	}
	v.rotate(t, v.p, name, secretFor(name, 2))
	wantStates(t, v.o.Second, name, "1:previous 2:current")
	for n := 1; n <= 2; n++ {
		want := reference(v.o.Algorithm, secretFor(name, n), versionsMessage)
		if got := v.versionTag(t, v.o.Second, name, n); !bytes.Equal(got, want) {
			t.Errorf("second provider's version %d: %x, want %x", n, got, want)
		}
	}
	want := reference(v.o.Algorithm, secretFor(name, 2), versionsMessage)
	if got := v.currentTag(t, v.o.Second, name); !bytes.Equal(got, want) {
		t.Errorf("second provider's current key after it listed the versions: %x, want version 2's %x", got, want)
	}
	if err := v.o.Second.RetireVersion(context.Background(), name, 1, false); err != nil {
		t.Fatal(err)
	}
	wantStates(t, v.p, name, "1:retired 2:current")
}

func (v *versionsRunner) testReopened(t *testing.T) {
	ctx := context.Background()
	keys, err := v.p.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type snapshot struct {
		states string
		tags   map[int][]byte
	}
	before := map[string]snapshot{}
	for _, k := range keys {
		vs, err := v.p.Versions(ctx, k.Name)
		if err != nil {
			t.Fatal(err)
		}
		s := snapshot{states: states(vs), tags: map[int][]byte{}}
		for _, vi := range vs {
			if vi.State != providers.VersionDestroyed {
				s.tags[vi.Version] = v.versionTag(t, v.p, k.Name, vi.Version)
			}
		}
		before[k.Name] = s
	}
	if len(before) == 0 {
		t.Fatal("no keys to reopen with")
	}
	p := v.o.Reopen(t)
	for name, s := range before {
		vs := wantStates(t, p, name, s.states)
		for _, vi := range vs {
			if want, ok := s.tags[vi.Version]; ok {
				if got := v.versionTag(t, p, name, vi.Version); !bytes.Equal(got, want) {
					t.Errorf("%s version %d after reopening: %x, want %x", name, vi.Version, got, want)
				}
			}
		}
	}
}
