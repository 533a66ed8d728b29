package software

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/memlock"
	"github.com/hmac-agent/hmac-agent/internal/privfile"
	"github.com/hmac-agent/hmac-agent/providers"
)

// DefaultKeyLength is the length of a generated key when none is asked
// for: 256 bits, the digest size of HMAC-SHA256.
const DefaultKeyLength = 32

// MaxKeyLength bounds imported and generated keys. HMAC hashes any key
// longer than the block size down to a digest, so nothing is gained beyond
// it; the bound only keeps requests small.
const MaxKeyLength = 4096

// Provider is a software keystore. Create it with [Open].
type Provider struct {
	name string
	dir  string

	mu sync.RWMutex
	// keys holds each key's current version, all every loaded version
	// (current, previous and retired; destroyed ones are dropped).
	keys    map[string]*key
	all     map[string]map[int]*key
	closed  bool
	lockErr error // the first failure to lock key bytes in memory
}

var (
	_ providers.Provider  = (*Provider)(nil)
	_ providers.Generator = (*Provider)(nil)
	_ providers.Importer  = (*Provider)(nil)
	_ providers.Deleter   = (*Provider)(nil)
)

// Open opens the keystore in dir, creating the directory if it is missing,
// removes temporary key files a crash left there, and loads every key. It
// fails, naming the file and the rule, if the directory is a symbolic
// link, if it or any key file may be read or written by group or others
// or is owned by another user, if a parent directory may be changed by
// anyone but the agent's user or root, or if a key file is corrupt.
func Open(name, dir string) (*Provider, error) {
	dir, err := openDir(dir)
	if err != nil {
		return nil, err
	}
	if _, err := privfile.RemoveStale(dir); err != nil {
		return nil, fmt.Errorf("software keystore: %w", err)
	}
	keys, lockErr, err := loadKeys(dir)
	if err != nil {
		return nil, err
	}
	current, all := splitLoaded(keys)
	return &Provider{name: name, dir: dir, keys: current, all: all, lockErr: lockErr}, nil
}

// Health checks that the keystore directory is still there and private.
func (p *Provider) Health(ctx context.Context) error {
	_, err := openDir(p.dir)
	return err
}

// LockError returns the first failure to lock key bytes in memory (the
// RLIMIT_MEMLOCK limit), or nil if every key's bytes are locked. Keys
// work either way; the agent logs it.
func (p *Provider) LockError() error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.lockErr
}

// Name returns the provider's configured name.
func (p *Provider) Name() string { return p.name }

// Kind returns "software".
func (p *Provider) Kind() string { return "software" }

// HealthMessage is what a failed health probe means for a keystore.
func (p *Provider) HealthMessage() string {
	return "the keystore directory is missing or not private"
}

var (
	_ providers.HealthChecker   = (*Provider)(nil)
	_ providers.HealthDescriber = (*Provider)(nil)
)

// Dir returns the keystore directory.
func (p *Provider) Dir() string { return p.dir }

// Key returns the named key's current version or an error wrapping
// ErrKeyNotFound. A key not loaded is looked for in the directory.
func (p *Provider) Key(ctx context.Context, name string) (providers.Key, error) {
	p.mu.RLock()
	k, closed := p.keys[name], p.closed
	p.mu.RUnlock()
	switch {
	case closed:
		return nil, fmt.Errorf("software: %w", providers.ErrClosed)
	case k != nil:
		return k, nil
	case providers.CheckKeyName(name) != nil:
		return nil, fmt.Errorf("software: %q: %w", name, providers.ErrKeyNotFound)
	}
	// Perhaps made by another agent sharing the keystore since it was
	// opened. The agent remembers names found missing, so a caller
	// guessing names does not read the directory on every guess.
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("software: %w", providers.ErrClosed)
	}
	if _, err := p.syncLocked(name); err != nil {
		return nil, err
	}
	return p.keys[name], nil
}

// Keys lists the keystore's keys, sorted by name.
func (p *Provider) Keys(ctx context.Context) ([]providers.KeyInfo, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return nil, fmt.Errorf("software: %w", providers.ErrClosed)
	}
	infos := make([]providers.KeyInfo, 0, len(p.keys))
	for _, k := range p.keys {
		infos = append(infos, p.infoLocked(k))
	}
	slices.SortFunc(infos, func(a, b providers.KeyInfo) int { return compareStrings(a.Name, b.Name) })
	return infos, nil
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (p *Provider) infoLocked(k *key) providers.KeyInfo {
	return providers.KeyInfo{
		Name:       k.name,
		Provider:   p.name,
		Kind:       p.Kind(),
		Algorithms: providers.Algorithms(),
		Created:    k.created,
	}
}

// GenerateKey creates a random key of length bytes (0: DefaultKeyLength)
// from crypto/rand. Errors wrap ErrKeyExists, ErrInvalidArgument or
// ErrClosed.
func (p *Provider) GenerateKey(ctx context.Context, name string, length int) (providers.KeyInfo, error) {
	if length == 0 {
		length = DefaultKeyLength
	}
	if length < 1 || length > MaxKeyLength {
		return providers.KeyInfo{}, fmt.Errorf("software: key length %d: %w: must be 1 to %d bytes", length, providers.ErrInvalidArgument, MaxKeyLength)
	}
	// Made in locked memory, so that the new key has no copy on the heap.
	buf, err := memlock.Alloc(length)
	if buf == nil {
		return providers.KeyInfo{}, fmt.Errorf("software: %w", err)
	}
	defer buf.Destroy()
	rand.Read(buf.Bytes())
	return p.add(name, buf.Bytes())
}

// ImportKey stores a copy of secret under name. An empty secret is allowed,
// as HMAC allows it. Errors wrap ErrKeyExists, ErrInvalidArgument or
// ErrClosed.
func (p *Provider) ImportKey(ctx context.Context, name string, secret []byte) (providers.KeyInfo, error) {
	if len(secret) > MaxKeyLength {
		return providers.KeyInfo{}, fmt.Errorf("software: key of %d bytes: %w: at most %d bytes", len(secret), providers.ErrInvalidArgument, MaxKeyLength)
	}
	return p.add(name, secret)
}

func (p *Provider) add(name string, secret []byte) (providers.KeyInfo, error) {
	if err := providers.CheckKeyName(name); err != nil {
		return providers.KeyInfo{}, fmt.Errorf("software: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return providers.KeyInfo{}, fmt.Errorf("software: %w", providers.ErrClosed)
	}
	if _, ok := p.keys[name]; ok {
		return providers.KeyInfo{}, fmt.Errorf("software: %q: %w", name, providers.ErrKeyExists)
	}
	created := time.Now().UTC().Truncate(time.Second)
	if err := writeKeyFile(p.dir, name, secret, created); err != nil {
		return providers.KeyInfo{}, err
	}
	k, lockErr := newKey(name, secret, created)
	if k == nil {
		removeKeyFile(p.dir, name)
		return providers.KeyInfo{}, fmt.Errorf("software: %w", lockErr)
	}
	if p.lockErr == nil {
		p.lockErr = lockErr
	}
	p.keys[name] = k
	p.all[name] = map[int]*key{1: k}
	return p.infoLocked(k), nil
}

// DeleteKey removes the key from disk and memory and zeroes what was
// derived from it. Contexts still open on it fail at their next Copy,
// Finalize or Verify with ErrKeyNotFound. Errors wrap ErrKeyNotFound or
// ErrClosed.
func (p *Provider) DeleteKey(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("software: %w", providers.ErrClosed)
	}
	if _, ok := p.keys[name]; !ok {
		return fmt.Errorf("software: %q: %w", name, providers.ErrKeyNotFound)
	}
	if err := p.removeVersionsLocked(name); err != nil {
		return err
	}
	delete(p.keys, name)
	return nil
}

// Close zeroes every key's bytes. Afterwards every method fails with
// ErrClosed.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	for _, vs := range p.all {
		for _, k := range vs {
			k.destroy()
		}
	}
	p.keys, p.all = nil, nil
	return nil
}
