package software

import (
	"context"
	"crypto/hmac"
	"fmt"
	"hash"
	"sync"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/memlock"
	"github.com/hmac-agent/hmac-agent/providers"
)

// key is one software key. Its secret is kept only to key new HMAC states;
// states are pooled per algorithm because keying costs more than a short
// MAC.
type key struct {
	name    string
	created time.Time

	mu      sync.Mutex // guards secret and deleted
	secret  *memlock.Secret
	deleted bool

	pools [providers.MaxAlgorithm + 1]sync.Pool // of hash.Hash, keyed, any state
}

var (
	_ providers.Key       = (*key)(nil)
	_ providers.OneShot   = (*key)(nil)
	_ providers.Immediate = (*key)(nil)
	_ providers.MAC       = (*mac)(nil)
)

// newKey copies secret into locked memory. An error says only that the
// memory could not be locked; the key works regardless.
func newKey(name string, secret []byte, created time.Time) (*key, error) {
	s, err := memlock.New(secret)
	if s == nil {
		return nil, err
	}
	return &key{name: name, created: created, secret: s}, err
}

func (k *key) Name() string                          { return k.name }
func (k *key) Supports(alg providers.Algorithm) bool { return alg.Valid() }
func (k *key) Immediate() bool                       { return true }

// state returns a keyed HMAC state, reset to empty input.
func (k *key) state(alg providers.Algorithm) (hash.Hash, error) {
	if !alg.Valid() {
		return nil, fmt.Errorf("software: %w: %s", providers.ErrUnsupportedAlgorithm, alg)
	}
	if h, ok := k.pools[alg].Get().(hash.Hash); ok {
		h.Reset()
		return h, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.deleted {
		return nil, fmt.Errorf("software: key %q was deleted: %w", k.name, providers.ErrKeyNotFound)
	}
	secret := k.secret.Bytes()
	if stateHMACs[alg] {
		return newStateHMAC(alg, secret), nil
	}
	return hmac.New(alg.NewHash(), secret), nil
}

func (k *key) release(alg providers.Algorithm, h hash.Hash) { k.pools[alg].Put(h) }

// destroy zeroes the secret and drops pooled states, so that no new state
// can be keyed from it.
func (k *key) destroy() {
	k.mu.Lock()
	if !k.deleted {
		k.secret.Destroy()
		k.deleted = true
	}
	k.mu.Unlock()
	for i := range k.pools {
		k.pools[i] = sync.Pool{}
	}
}

// NewMAC opens a context. Errors wrap ErrUnsupportedAlgorithm for an
// invalid algorithm.
func (k *key) NewMAC(ctx context.Context, alg providers.Algorithm) (providers.MAC, error) {
	h, err := k.state(alg)
	if err != nil {
		return nil, err
	}
	return &mac{key: k, alg: alg, h: h}, nil
}

// SumMAC appends the tag of data to dst without allocating in steady state.
func (k *key) SumMAC(ctx context.Context, alg providers.Algorithm, data, dst []byte) ([]byte, error) {
	h, err := k.state(alg)
	if err != nil {
		return nil, err
	}
	h.Write(data)
	dst = h.Sum(dst)
	k.release(alg, h)
	return dst, nil
}

// mac is a context. h is nil once the context is finished.
type mac struct {
	key *key
	alg providers.Algorithm
	h   hash.Hash
}

func (m *mac) Algorithm() providers.Algorithm { return m.alg }

func (m *mac) Update(ctx context.Context, p []byte) error {
	if m.h == nil {
		return providers.ErrAlreadyFinalized
	}
	m.h.Write(p)
	return nil
}

// Copy clones the hash state; the input is not replayed.
func (m *mac) Copy(ctx context.Context) (providers.MAC, error) {
	if m.h == nil {
		return nil, providers.ErrAlreadyFinalized
	}
	c, err := m.h.(hash.Cloner).Clone()
	if err != nil {
		return nil, fmt.Errorf("software: copy: %w", err)
	}
	return &mac{key: m.key, alg: m.alg, h: c.(hash.Hash)}, nil
}

func (m *mac) Finalize(ctx context.Context) ([]byte, error) {
	if m.h == nil {
		return nil, providers.ErrAlreadyFinalized
	}
	tag := m.h.Sum(nil)
	m.Close()
	return tag, nil
}

func (m *mac) Verify(ctx context.Context, tag []byte) error {
	if m.h == nil {
		return providers.ErrAlreadyFinalized
	}
	var buf [64]byte
	sum := m.h.Sum(buf[:0])
	m.Close()
	if !hmac.Equal(sum, tag) {
		return providers.ErrInvalidSignature
	}
	return nil
}

func (m *mac) Close() {
	if m.h != nil {
		m.key.release(m.alg, m.h)
		m.h = nil
	}
}
