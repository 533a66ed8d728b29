package tpm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/hmac-agent/hmac-agent/internal/privfile"
	"github.com/hmac-agent/hmac-agent/providers"
	hashfuncs "github.com/hmac-agent/hmac-agent/providers/hashes"
)

// blob is one TPM object of a key, as stored on disk: enough to load it
// under the storage key, and the auth value that unlocks it.
type blob struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	Public  []byte    `json:"public"`  // TPMT_PUBLIC
	Private []byte    `json:"private"` // TPM2B_PRIVATE's buffer
	Auth    []byte    `json:"auth"`
}

// key is a named key: one object per algorithm it was made for.
type key struct {
	p       *Provider
	name    string
	version int
	created time.Time // when this version was made
	// keyCreated is when the key's first version was made, for listing
	// the key; guarded by the provider's keysMu.
	keyCreated time.Time
	// objs is fixed once the key is published; the objects' fields are
	// guarded by the provider's mu.
	objs map[providers.Algorithm]*object
}

var (
	_ providers.Key     = (*key)(nil)
	_ providers.OneShot = (*key)(nil)
)

func (k *key) Name() string { return k.name }

// label names one of the key's objects in errors.
func (k *key) label(alg providers.Algorithm) string {
	if k.version > 1 {
		return fmt.Sprintf("%q version %d (%s)", k.name, k.version, alg)
	}
	return fmt.Sprintf("%q (%s)", k.name, alg)
}

// Supports reports whether the key has an object for alg.
func (k *key) Supports(alg providers.Algorithm) bool { _, ok := k.objs[alg]; return ok }

func (k *key) algorithms() []providers.Algorithm {
	var out []providers.Algorithm
	for _, a := range providers.Algorithms() {
		if k.Supports(a) {
			out = append(out, a)
		}
	}
	return out
}

func (k *key) destroy() {
	for _, o := range k.objs {
		clear(o.blob.Auth)
	}
}

func (p *Provider) blobPath(name string, alg providers.Algorithm) string {
	return filepath.Join(p.keysDir, name, alg.String()+".json")
}

// tmpPrefix starts the names of directories a key is built in before it
// is renamed into place, and of deleted keys' directories before they are
// removed. No key name starts with a dot.
const tmpPrefix = ".tmp-"

// readKeys removes what a crash left half done, then loads every key's
// blobs from the state directory. A loose or corrupt file stops the agent,
// naming the file.
func (p *Provider) readKeys() error {
	if _, err := privfile.RemoveStale(p.keysDir); err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	entries, err := os.ReadDir(p.keysDir)
	if err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(p.keysDir, e.Name())
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			// A key being built or deleted when the agent stopped: it
			// was never acknowledged, or its deletion was.
			if err := os.RemoveAll(path); err != nil {
				return fmt.Errorf("tpm: remove the leftover %s: %w", path, err)
			}
			continue
		}
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		// A blob written when the agent crashed is still in its temporary
		// file, beside the key's other blobs.
		if _, err := privfile.RemoveStale(filepath.Join(p.keysDir, e.Name())); err != nil {
			return fmt.Errorf("tpm: %w", err)
		}
		if _, err := p.readKey(e.Name()); err != nil {
			return err
		}
		k, err := p.readVersions(e.Name())
		if err != nil {
			return err
		}
		if k == nil {
			// An empty directory, left by releases that made keys in
			// place: it would block the name.
			os.Remove(path)
			continue
		}
		p.keys[k.name] = k
	}
	return privfile.SyncDir(p.keysDir)
}

func (p *Provider) readKey(name string) (*key, error) {
	dir := filepath.Join(p.keysDir, name)
	info, err := os.Lstat(dir) // a link is refused by Check, never followed
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	if err := privfile.Check(dir, info, true); err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	return p.readBlobs(dir, name, 1)
}

// readBlobs loads a version's blobs from dir.
func (p *Provider) readBlobs(dir, name string, version int) (*key, error) {
	k := &key{p: p, name: name, version: version, objs: map[providers.Algorithm]*object{}}
	for _, alg := range providers.Algorithms() {
		path := filepath.Join(dir, alg.String()+".json")
		data, err := privfile.Read(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("tpm: %w", err)
		}
		var b blob
		if err := json.Unmarshal(data, &b); err != nil || b.Version != 1 {
			return nil, fmt.Errorf("tpm: %s: not a key blob file (%v)", path, err)
		}
		k.created = b.Created
		k.objs[alg] = &object{kind: objKey, blob: &b, label: k.label(alg)}
	}
	return k, nil
}

// Key returns the named key's current version, or version N of it when
// named NAME@N, or an error wrapping ErrKeyNotFound.
func (p *Provider) Key(ctx context.Context, name string) (providers.Key, error) {
	p.keysMu.RLock()
	k, ok := p.keys[name]
	p.keysMu.RUnlock()
	if ok {
		return k, nil
	}
	if base, n, versioned := splitVersion(name); versioned {
		return p.KeyVersion(ctx, base, n)
	}
	return nil, fmt.Errorf("tpm: %q: %w", name, providers.ErrKeyNotFound)
}

// Keys lists the keys with the algorithms each has an object for.
func (p *Provider) Keys(ctx context.Context) ([]providers.KeyInfo, error) {
	p.keysMu.RLock()
	defer p.keysMu.RUnlock()
	var out []providers.KeyInfo
	for _, k := range p.keys {
		created := k.keyCreated
		if created.IsZero() {
			created = k.created
		}
		out = append(out, providers.KeyInfo{Name: k.name, Provider: p.cfg.Name, Kind: p.Kind(), Algorithms: k.algorithms(), Created: created})
	}
	slices.SortFunc(out, func(a, b providers.KeyInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// HMACTemplate is the public area of an HMAC key for alg, with attrs
// plus signing, user auth and no dictionary-attack protection (its auth
// value is random). Benchmarks use it to make the same keys with go-tpm.
func HMACTemplate(alg providers.Algorithm, attrs tpm2.TPMAObject) tpm2.TPMTPublic {
	attrs.SignEncrypt, attrs.UserWithAuth, attrs.NoDA = true, true, true
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          hashes[alg],
		ObjectAttributes: attrs,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: hashes[alg]}),
			},
		}),
	}
}

// GenerateKey creates one key object per algorithm inside the TPM, each
// with its own secret of the digest's length, never leaving the TPM
// (fixedTPM, fixedParent). The TPM chooses the length: length must be 0.
func (p *Provider) GenerateKey(ctx context.Context, name string, length int) (providers.KeyInfo, error) {
	if length != 0 {
		return providers.KeyInfo{}, fmt.Errorf("tpm: %w", providers.Publicf(providers.ErrInvalidArgument, "a TPM generates keys of the digest's length; give no length"))
	}
	return p.create(name, p.generatedObject)
}

// generatedObject makes a key object for alg inside the TPM.
func (p *Provider) generatedObject(alg providers.Algorithm, auth []byte) (*blob, error) {
	tmpl := HMACTemplate(alg, tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true})
	var b *blob
	err := p.run(context.Background(), func() error {
		if err := p.loadLocked(p.srk); err != nil {
			return err
		}
		var rsp *tpm2.CreateResponse
		err := p.roomLocked([]*object{p.srk}, func() (err error) {
			rsp, err = tpm2.Create{
				ParentHandle: tpm2.AuthHandle{Handle: p.srk.handle, Name: p.srk.name, Auth: tpm2.PasswordAuth(nil)},
				InSensitive:  tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: auth}}},
				InPublic:     tpm2.New2B(tmpl),
			}.Execute(p.t)
			return err
		})
		if err != nil {
			return fmt.Errorf("tpm: create %s key: %w", alg, err)
		}
		b = &blob{Public: rsp.OutPublic.Bytes(), Private: rsp.OutPrivate.Buffer}
		return nil
	})
	return b, err
}

// ImportKey brings secret into the TPM with TPM2_Import of a duplicate made
// in software and encrypted to the storage key, so the key's bytes never
// cross the bus in clear. Each algorithm gets its object: the key hashed
// if longer than the block size, zero-padded if shorter than the digest
// (HMAC's own rules, so tags do not change).
func (p *Provider) ImportKey(ctx context.Context, name string, secret []byte) (providers.KeyInfo, error) {
	if len(secret) > 4096 {
		return providers.KeyInfo{}, fmt.Errorf("tpm: %w: key of %d bytes, at most 4096", providers.ErrInvalidArgument, len(secret))
	}
	return p.create(name, p.importedObject(secret))
}

// importedObject returns a maker of key objects holding secret, brought
// in with TPM2_Import.
func (p *Provider) importedObject(secret []byte) func(alg providers.Algorithm, auth []byte) (*blob, error) {
	return func(alg providers.Algorithm, auth []byte) (*blob, error) {
		value := hmacKeyFor(alg, secret)
		defer clear(value)
		seed := make([]byte, alg.Size())
		rand.Read(seed)
		h := hashfuncs.New(alg)()
		h.Write(seed)
		h.Write(value)
		pub := HMACTemplate(alg, tpm2.TPMAObject{})
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: h.Sum(nil)})
		sensitive := tpm2.Marshal(tpm2.TPMTSensitive{
			SensitiveType: tpm2.TPMAlgKeyedHash,
			AuthValue:     tpm2.TPM2BAuth{Buffer: auth},
			SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
			Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: value}),
		})
		defer clear(sensitive)
		name, err := tpm2.ObjectName(&pub)
		if err != nil {
			return nil, err
		}
		var b *blob
		err = p.run(context.Background(), func() error {
			if err := p.loadLocked(p.srk); err != nil {
				return err
			}
			encap, err := tpm2.ImportEncapsulationKey(p.srkPub)
			if err != nil {
				return err
			}
			dup, seedCipher, err := tpm2.CreateDuplicate(rand.Reader, encap, name.Buffer, sensitive)
			if err != nil {
				return err
			}
			var rsp *tpm2.ImportResponse
			err = p.roomLocked([]*object{p.srk}, func() (err error) {
				rsp, err = tpm2.Import{
					ParentHandle: tpm2.AuthHandle{Handle: p.srk.handle, Name: p.srk.name, Auth: tpm2.PasswordAuth(nil)},
					ObjectPublic: tpm2.New2B(pub),
					Duplicate:    tpm2.TPM2BPrivate{Buffer: dup},
					InSymSeed:    tpm2.TPM2BEncryptedSecret{Buffer: seedCipher},
				}.Execute(p.t)
				return err
			})
			if err != nil {
				return fmt.Errorf("tpm: import %s key: %w", alg, err)
			}
			b = &blob{Public: tpm2.Marshal(pub), Private: rsp.OutPrivate.Buffer}
			return nil
		})
		return b, err
	}
}

// hmacKeyFor applies HMAC's key rules for alg: a key longer than the block
// is replaced by its hash, and any key is zero-padded to the digest size
// (the TPM wants a non-empty key; padding with zeros up to the block size
// does not change HMAC).
func hmacKeyFor(alg providers.Algorithm, secret []byte) []byte {
	if len(secret) > alg.BlockSize() {
		h := hashfuncs.New(alg)()
		h.Write(secret)
		secret = h.Sum(nil)
	}
	out := make([]byte, max(len(secret), alg.Size()))
	copy(out, secret)
	return out
}

// create makes one object per algorithm with newObject and stores the
// blobs. The key appears whole or not at all: its blobs are written and
// synced in a directory of its own under a temporary name, which is then
// renamed to the key's name. A crash before the rename leaves only the
// temporary directory, removed at the next start.
func (p *Provider) create(name string, newObject func(alg providers.Algorithm, auth []byte) (*blob, error)) (providers.KeyInfo, error) {
	if err := providers.CheckKeyName(name); err != nil {
		return providers.KeyInfo{}, fmt.Errorf("tpm: %w", err)
	}
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	if _, ok := p.keys[name]; ok {
		return providers.KeyInfo{}, fmt.Errorf("tpm: %q: %w", name, providers.ErrKeyExists)
	}
	tmp, err := os.MkdirTemp(p.keysDir, tmpPrefix+"new-*")
	if err != nil {
		return providers.KeyInfo{}, fmt.Errorf("tpm: %w", err)
	}
	defer os.RemoveAll(tmp) // nothing to remove once renamed
	created := time.Now().UTC().Truncate(time.Second)
	k, err := p.writeBlobs(tmp, name, 1, created, newObject)
	if err != nil {
		return providers.KeyInfo{}, err
	}
	dir := filepath.Join(p.keysDir, name)
	err = os.Rename(tmp, dir)
	if errors.Is(err, fs.ErrExist) && os.Remove(dir) == nil {
		// An empty directory, which only a crash of an older version
		// leaves: the name is free.
		err = os.Rename(tmp, dir)
	}
	if err != nil {
		k.destroy()
		if errors.Is(err, fs.ErrExist) {
			return providers.KeyInfo{}, fmt.Errorf("tpm: %q: %w (%s exists)", name, providers.ErrKeyExists, dir)
		}
		return providers.KeyInfo{}, fmt.Errorf("tpm: %w", err)
	}
	if err := privfile.SyncDir(p.keysDir); err != nil {
		// The key may or may not survive a crash now: undo it rather
		// than acknowledge it.
		os.RemoveAll(dir)
		k.destroy()
		return providers.KeyInfo{}, fmt.Errorf("tpm: %w", err)
	}
	p.keys[name] = k
	p.versions[versionRef(name, 1)] = k
	return providers.KeyInfo{Name: name, Provider: p.cfg.Name, Kind: p.Kind(), Algorithms: k.algorithms(), Created: created}, nil
}

// writeBlobs makes one object per algorithm with newObject and writes
// their blobs, synced, in dir.
func (p *Provider) writeBlobs(dir, name string, version int, created time.Time, newObject func(alg providers.Algorithm, auth []byte) (*blob, error)) (*key, error) {
	k := &key{p: p, name: name, version: version, created: created, objs: map[providers.Algorithm]*object{}}
	for _, alg := range p.algs {
		// A TPM takes auth values up to the name algorithm's digest
		// size, which is the key's hash here.
		auth := make([]byte, alg.Size())
		rand.Read(auth)
		b, err := newObject(alg, auth)
		if err == nil {
			b.Version, b.Created, b.Auth = 1, created, auth
			var data []byte
			data, err = json.Marshal(b)
			if err == nil {
				// Create syncs the file and tmp.
				err = privfile.Create(filepath.Join(dir, alg.String()+".json"), data)
			}
		}
		if err != nil {
			k.destroy()
			clear(auth)
			if errors.Is(err, errTransport) || errors.Is(err, providers.ErrUnavailable) {
				return nil, err
			}
			return nil, fmt.Errorf("tpm: key %q: %w: %w", name, p.refused("the key could not be made"), err)
		}
		k.objs[alg] = &object{kind: objKey, blob: b, label: k.label(alg)}
	}
	return k, nil
}

// DeleteKey flushes the key's objects and removes its blobs. Without the
// blobs the TPM cannot load the key again.
func (p *Provider) DeleteKey(ctx context.Context, name string) error {
	p.rotateMu.Lock()
	defer p.rotateMu.Unlock()
	p.keysMu.Lock()
	k, ok := p.keys[name]
	if ok {
		delete(p.keys, name)
	}
	// Every version goes with the key.
	gone := []*key{k}
	for ref, v := range p.versions {
		if base, _, _ := splitVersion(ref); base == name {
			delete(p.versions, ref)
			if v != k {
				gone = append(gone, v)
			}
		}
	}
	p.keysMu.Unlock()
	if !ok {
		return fmt.Errorf("tpm: %q: %w", name, providers.ErrKeyNotFound)
	}
	// Released whatever the caller's context: a handle left loaded would
	// hold a slot.
	p.run(context.Background(), func() error {
		for _, k := range gone {
			for _, o := range k.objs {
				p.releaseLocked(o)
			}
		}
		return nil
	})
	for _, k := range gone {
		k.destroy()
	}
	// The key goes at once, by a rename; its files after, and a crash
	// between leaves a temporary directory the next start removes.
	removed := filepath.Join(p.keysDir, tmpPrefix+"deleted-"+rand.Text())
	if err := os.Rename(filepath.Join(p.keysDir, name), removed); err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	if err := privfile.SyncDir(p.keysDir); err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	if err := os.RemoveAll(removed); err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	return privfile.SyncDir(p.keysDir)
}
