package tpm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/privfile"
	"github.com/hmac-agent/hmac-agent/providers"
)

// Key versions live in the state directory, beside the key's blobs:
//
//	keys/NAME/sha256.json ...     version 1, as keys were made before versions
//	keys/NAME/v2/sha256.json ...  version 2
//	keys/NAME/retired-2.json      version 2 stopped verifying
//	keys/NAME/destroyed-2.json    version 2's blobs were removed
//
// A version appears whole or not at all: its blobs are written and synced
// in a temporary directory inside the key's, which is then renamed to vN.
// A rename onto a directory that exists and is not empty fails, so two
// providers sharing the directory never make two versions with one
// number: the second takes the next. States are files created once and
// never changed, written (and synced) before what they announce is done.

// maxKeyVersion bounds version numbers, so that a hostile or broken
// record cannot make readers walk or count past what a key can have.
const maxKeyVersion = 1 << 30

// versionDir is where version n's blobs are.
func (p *Provider) versionDir(name string, n int) string {
	if n == 1 {
		return filepath.Join(p.keysDir, name)
	}
	return filepath.Join(p.keysDir, name, "v"+strconv.Itoa(n))
}

func versionRef(name string, n int) string { return name + "@" + strconv.Itoa(n) }

// splitVersion splits NAME@N, N a positive decimal without sign or
// leading zero.
func splitVersion(ref string) (name string, n int, ok bool) {
	i := strings.LastIndexByte(ref, '@')
	if i <= 0 || i == len(ref)-1 || ref[i+1] == '0' || strings.ContainsAny(ref[i+1:], "+-") {
		return "", 0, false
	}
	n, err := strconv.Atoi(ref[i+1:])
	if err != nil || n < 1 || n > maxKeyVersion {
		return "", 0, false
	}
	return ref[:i], n, true
}

// stateMark is the content of a retired-N or destroyed-N file.
type stateMark struct {
	Created time.Time `json:"created,omitzero"` // destroyed: the blobs that said it are gone
	Retired time.Time `json:"retired"`
}

func (p *Provider) markPath(name, state string, n int) string {
	return filepath.Join(p.keysDir, name, state+"-"+strconv.Itoa(n)+".json")
}

// versionEntry is one version as the state directory holds it.
type versionEntry struct {
	providers.VersionInfo
	present bool // its blobs are there
}

// scanVersions reads the named key's versions from its directory, oldest
// first, and the highest number any file names. ErrKeyNotFound if it has
// none.
func (p *Provider) scanVersions(name string) ([]*versionEntry, int, error) {
	if err := providers.CheckKeyName(name); err != nil {
		return nil, 0, fmt.Errorf("tpm: %w", err)
	}
	dir := filepath.Join(p.keysDir, name)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("tpm: %q: %w", name, providers.ErrKeyNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("tpm: %w", err)
	}
	byNumber := map[int]*versionEntry{}
	get := func(n int) *versionEntry {
		if byNumber[n] == nil {
			byNumber[n] = &versionEntry{VersionInfo: providers.VersionInfo{Version: n}}
		}
		return byNumber[n]
	}
	for _, e := range entries {
		file := e.Name()
		if strings.HasPrefix(file, ".") {
			continue
		}
		if e.IsDir() {
			if n, err := strconv.Atoi(strings.TrimPrefix(file, "v")); err == nil && n > 1 && n <= maxKeyVersion && file == "v"+strconv.Itoa(n) {
				get(n).present = true
			}
			continue
		}
		state, number, ok := strings.Cut(strings.TrimSuffix(file, ".json"), "-")
		if !ok {
			if _, err := providers.ParseAlgorithm(strings.TrimSuffix(file, ".json")); err == nil {
				get(1).present = true
			}
			continue
		}
		n, err := strconv.Atoi(number)
		if err != nil || n < 1 || n > maxKeyVersion || state != "retired" && state != "destroyed" {
			continue
		}
		var mark stateMark
		path := filepath.Join(dir, file)
		data, err := privfile.Read(path)
		if err == nil {
			err = json.Unmarshal(data, &mark)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("tpm: %s: %w", path, err)
		}
		v := get(n)
		v.Retired = mark.Retired
		if state == "destroyed" {
			v.State = providers.VersionDestroyed
			if v.Created.IsZero() {
				v.Created = mark.Created
			}
		}
	}
	if len(byNumber) == 0 {
		return nil, 0, fmt.Errorf("tpm: %q: %w", name, providers.ErrKeyNotFound)
	}
	newest := 0
	for n, v := range byNumber {
		if v.present && v.State != providers.VersionDestroyed {
			newest = max(newest, n)
		}
	}
	var out []*versionEntry
	highest := 0
	for _, n := range slices.Sorted(maps.Keys(byNumber)) {
		v := byNumber[n]
		highest = n
		if n > 1 && !v.present && v.State != providers.VersionDestroyed {
			// A mark the agent did not write: every version it
			// made has its blobs, or is marked destroyed first.
			continue
		}
		switch {
		case v.State == providers.VersionDestroyed || !v.present:
			v.State = providers.VersionDestroyed
		case !v.Retired.IsZero():
			v.State = providers.VersionRetired
		case n == newest:
			v.State = providers.VersionCurrent
		default:
			v.State = providers.VersionPrevious
		}
		if v.present && v.Created.IsZero() {
			if k, err := p.loadVersion(name, n); err == nil {
				v.Created = k.created
			}
		}
		if len(out) > 0 {
			out[len(out)-1].Superseded = v.Created
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, 0, fmt.Errorf("tpm: %q: %w", name, providers.ErrKeyNotFound)
	}
	return out, highest, nil
}

// loadVersion returns version n of the named key, reading its blobs the
// first time.
func (p *Provider) loadVersion(name string, n int) (*key, error) {
	ref := versionRef(name, n)
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	if k := p.versions[ref]; k != nil {
		return k, nil
	}
	k, err := p.readBlobs(p.versionDir(name, n), name, n)
	if err != nil {
		return nil, err
	}
	if len(k.objs) == 0 {
		return nil, fmt.Errorf("tpm: %q: %w: no version %d", name, providers.ErrKeyNotFound, n)
	}
	p.versions[ref] = k
	return k, nil
}

// Versions returns the named key's versions, oldest first, as the state
// directory holds them now.
func (p *Provider) Versions(ctx context.Context, name string) ([]providers.VersionInfo, error) {
	es, _, err := p.scanVersions(name)
	if err != nil {
		return nil, err
	}
	out := make([]providers.VersionInfo, len(es))
	for i, e := range es {
		out[i] = e.VersionInfo
		if e.State == providers.VersionCurrent {
			// Another provider on the directory may have rotated.
			if k, err := p.loadVersion(name, e.Version); err == nil {
				p.keysMu.Lock()
				if _, ok := p.keys[name]; ok {
					k.keyCreated = es[0].Created
					p.keys[name] = k
				}
				p.keysMu.Unlock()
			}
		}
	}
	return out, nil
}

// KeyVersion returns version n of the named key unless it was destroyed.
func (p *Provider) KeyVersion(ctx context.Context, name string, n int) (providers.Key, error) {
	es, _, err := p.scanVersions(name)
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		if e.Version == n && e.State != providers.VersionDestroyed {
			return p.loadVersion(name, n)
		}
	}
	return nil, fmt.Errorf("tpm: %q: %w: no version %d", name, providers.ErrKeyNotFound, n)
}

// RotateKey makes a new version of the named key current: generated
// inside the TPM when secret is nil (length must be 0: the TPM chooses),
// else imported as ImportKey does.
func (p *Provider) RotateKey(ctx context.Context, name string, secret []byte, length int) (providers.VersionInfo, error) {
	newObject := p.generatedObject
	if secret != nil {
		if len(secret) > 4096 {
			return providers.VersionInfo{}, fmt.Errorf("tpm: %w: key of %d bytes, at most 4096", providers.ErrInvalidArgument, len(secret))
		}
		newObject = p.importedObject(secret)
	} else if length != 0 {
		return providers.VersionInfo{}, fmt.Errorf("tpm: %w", providers.Publicf(providers.ErrInvalidArgument, "a TPM generates keys of the digest's length; give no length"))
	}
	p.rotateMu.Lock()
	defer p.rotateMu.Unlock()
	_, highest, err := p.scanVersions(name)
	if err != nil {
		return providers.VersionInfo{}, err
	}
	keyDir := filepath.Join(p.keysDir, name)
	tmp, err := os.MkdirTemp(keyDir, tmpPrefix+"new-*")
	if err != nil {
		return providers.VersionInfo{}, fmt.Errorf("tpm: %w", err)
	}
	defer os.RemoveAll(tmp) // nothing to remove once renamed
	created := time.Now().UTC().Truncate(time.Second)
	// One past any number a file names: never a number used before.
	n := highest + 1
	if n > maxKeyVersion {
		return providers.VersionInfo{}, providers.Publicf(providers.ErrLimit, "key %q has had %d versions, the most there can be", name, maxKeyVersion)
	}
	k, err := p.writeBlobs(tmp, name, n, created, newObject)
	if err != nil {
		return providers.VersionInfo{}, err
	}
	for {
		err = os.Rename(tmp, p.versionDir(name, n))
		if !errors.Is(err, fs.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
			break
		}
		// Another provider on this directory took the number.
		n++
	}
	if err == nil {
		err = privfile.SyncDir(keyDir)
		if err != nil {
			// Undo rather than acknowledge a version a crash may lose.
			os.RemoveAll(p.versionDir(name, n))
		}
	}
	if err != nil {
		k.destroy()
		return providers.VersionInfo{}, fmt.Errorf("tpm: %w", err)
	}
	k.version = n
	for alg, o := range k.objs {
		o.label = k.label(alg)
	}
	p.keysMu.Lock()
	p.versions[versionRef(name, n)] = k
	if old := p.keys[name]; old != nil {
		k.keyCreated = old.keyCreated
		if k.keyCreated.IsZero() {
			k.keyCreated = old.created
		}
	}
	p.keys[name] = k
	p.keysMu.Unlock()
	return providers.VersionInfo{Version: n, State: providers.VersionCurrent, Created: created}, nil
}

// RetireVersion records that version n stops verifying; with destroy it
// then flushes the version's objects and removes its blobs, after
// recording that too, so a crash between leaves a version that reads as
// destroyed and whose blobs the next destroy removes.
func (p *Provider) RetireVersion(ctx context.Context, name string, n int, destroy bool) error {
	p.rotateMu.Lock()
	defer p.rotateMu.Unlock()
	es, _, err := p.scanVersions(name)
	if err != nil {
		return err
	}
	var e *versionEntry
	for _, v := range es {
		if v.Version == n {
			e = v
		}
	}
	switch {
	case e == nil:
		return providers.Publicf(providers.ErrKeyNotFound, "key %q has no version %d", name, n)
	case e.State == providers.VersionCurrent:
		return providers.Publicf(providers.ErrInvalidArgument, "version %d of key %q is current: rotate before retiring it", n, name)
	}
	mark := stateMark{Created: e.Created, Retired: e.Retired}
	if mark.Retired.IsZero() {
		mark.Retired = time.Now().UTC().Truncate(time.Second)
		if err := p.writeMark(name, "retired", n, mark); err != nil {
			return err
		}
	}
	if !destroy {
		return nil
	}
	if e.State != providers.VersionDestroyed || e.present {
		if err := p.writeMark(name, "destroyed", n, mark); err != nil {
			return err
		}
	}
	p.keysMu.Lock()
	k := p.versions[versionRef(name, n)]
	delete(p.versions, versionRef(name, n))
	p.keysMu.Unlock()
	if k != nil {
		p.run(context.Background(), func() error {
			for _, o := range k.objs {
				p.releaseLocked(o)
			}
			return nil
		})
		k.destroy()
	}
	return p.removeBlobs(name, n)
}

// writeMark creates a state file; one that exists already stands.
func (p *Provider) writeMark(name, state string, n int, mark stateMark) error {
	data, err := json.Marshal(mark)
	if err != nil {
		return err
	}
	if err := privfile.Create(p.markPath(name, state, n), data); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("tpm: %w", err)
	}
	return nil
}

// removeBlobs removes version n's blobs. Version 1's are beside the
// others' directories; any other version's directory goes at once by a
// rename, and its files after.
func (p *Provider) removeBlobs(name string, n int) error {
	if n == 1 {
		for _, alg := range providers.Algorithms() {
			if err := privfile.Remove(p.blobPath(name, alg)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("tpm: %w", err)
			}
		}
		return nil
	}
	gone := filepath.Join(p.keysDir, tmpPrefix+"deleted-"+rand.Text())
	if err := os.Rename(p.versionDir(name, n), gone); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("tpm: %w", err)
	}
	if err := privfile.SyncDir(filepath.Join(p.keysDir, name)); err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	return privfile.SyncDir(p.keysDir)
}

// readVersions finds the current version of a key read at start, after
// removing versions a crash left half made. It returns nil if the key has
// no version at all.
func (p *Provider) readVersions(name string) (*key, error) {
	dir := filepath.Join(p.keysDir, name)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("tpm: remove the leftover %s: %w", filepath.Join(dir, e.Name()), err)
			}
		}
	}
	es, _, err := p.scanVersions(name)
	if errors.Is(err, providers.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for i := len(es) - 1; i >= 0; i-- {
		if es[i].State == providers.VersionCurrent {
			k, err := p.loadVersion(name, es[i].Version)
			if err == nil {
				p.keysMu.Lock()
				k.keyCreated = es[0].Created
				p.keysMu.Unlock()
			}
			return k, err
		}
	}
	return nil, nil
}
