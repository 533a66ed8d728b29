package software

import (
	"context"
	"crypto/hmac"
	"fmt"
	"sync"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/memlock"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
)

// key is one software key. It keeps no copy of the secret itself: only,
// for each algorithm, the hash states after the padded key blocks, in
// locked memory (see hmac.go). Keyed states are pooled per algorithm
// because restoring one is cheaper than allocating it.
type key struct {
	name    string
	created time.Time

	// mu guards arena and deleted. It is held for reading while a state
	// reads the arena, so that delete, which takes it for writing, never
	// unmaps memory in use.
	mu      sync.RWMutex
	arena   *memlock.Secret
	states  [providers.MaxAlgorithm + 1]*padStates
	deleted bool

	pools [providers.MaxAlgorithm + 1]sync.Pool // of *hmacState, any input
}

var (
	_ providers.Key       = (*key)(nil)
	_ providers.OneShot   = (*key)(nil)
	_ providers.Immediate = (*key)(nil)
	_ providers.MAC       = (*mac)(nil)
)

// newKey keys every algorithm's states from secret into a new locked
// arena. secret is not kept; the caller zeroes it. An error with a key
// says only that the memory could not be locked; the key works
// regardless.
func newKey(name string, secret []byte, created time.Time) (*key, error) {
	algs := providers.Algorithms()
	size, scratch := 0, 0
	for _, alg := range algs {
		size += arenaSize(hashes.New(alg))
		scratch = max(scratch, 2*hashes.New(alg)().BlockSize())
	}
	// The padded key is built in scratch memory of its own, unmapped
	// once the states are keyed, so that the arena a key keeps holds
	// the states alone: a page for the algorithms of today.
	pad, lockErr := memlock.Alloc(scratch)
	if pad == nil {
		return nil, lockErr
	}
	defer pad.Destroy()
	arena, err := memlock.Alloc(size)
	if arena == nil {
		return nil, err
	}
	if lockErr == nil {
		lockErr = err
	}
	k := &key{name: name, created: created, arena: arena}
	mem := arena.Bytes()
	for _, alg := range algs {
		n := arenaSize(hashes.New(alg))
		ps, err := keyStates(hashes.New(alg), secret, mem[:n:n], pad.Bytes())
		if err != nil {
			arena.Destroy()
			return nil, err
		}
		k.states[alg], mem = ps, mem[n:]
	}
	return k, lockErr
}

func (k *key) Name() string                          { return k.name }
func (k *key) Supports(alg providers.Algorithm) bool { return alg.Valid() }
func (k *key) Immediate() bool                       { return true }

// errDeleted is what a context on a deleted key gets: its keyed states
// are gone.
func (k *key) errDeleted() error {
	return fmt.Errorf("software: key %q was deleted: %w", k.name, providers.ErrKeyNotFound)
}

// state returns a keyed HMAC state, reset to empty input. k.mu is held
// for reading.
func (k *key) stateRLocked(alg providers.Algorithm) (*hmacState, error) {
	if !alg.Valid() {
		return nil, fmt.Errorf("software: %w: %s", providers.ErrUnsupportedAlgorithm, alg)
	}
	if k.deleted {
		return nil, k.errDeleted()
	}
	if h, ok := k.pools[alg].Get().(*hmacState); ok {
		if err := h.reset(); err != nil {
			return nil, err
		}
		return h, nil
	}
	return newHMACState(k.states[alg])
}

func (k *key) release(alg providers.Algorithm, h *hmacState) {
	h.done()
	k.pools[alg].Put(h)
}

// destroy zeroes and unmaps the keyed states and drops pooled states, so
// that no state can be keyed again. Contexts still open on the key fail
// at their next Copy, Finalize or Verify.
func (k *key) destroy() {
	k.mu.Lock()
	if !k.deleted {
		k.arena.Destroy()
		k.deleted = true
	}
	k.mu.Unlock()
	for i := range k.pools {
		for {
			h, ok := k.pools[i].Get().(*hmacState)
			if !ok {
				break
			}
			h.wipe()
		}
		k.pools[i] = sync.Pool{}
	}
}

// NewMAC opens a context. Errors wrap ErrUnsupportedAlgorithm for an
// invalid algorithm, or ErrKeyNotFound once the key is deleted.
func (k *key) NewMAC(ctx context.Context, alg providers.Algorithm) (providers.MAC, error) {
	k.mu.RLock()
	h, err := k.stateRLocked(alg)
	k.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return &mac{key: k, alg: alg, h: h}, nil
}

// SumMAC appends the tag of data to dst without allocating in steady state.
func (k *key) SumMAC(ctx context.Context, alg providers.Algorithm, data, dst []byte) ([]byte, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	h, err := k.stateRLocked(alg)
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
	h   *hmacState
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
	m.key.mu.RLock()
	defer m.key.mu.RUnlock()
	if m.key.deleted {
		return nil, m.key.errDeleted()
	}
	c, err := m.h.clone()
	if err != nil {
		return nil, fmt.Errorf("software: copy: %w", err)
	}
	return &mac{key: m.key, alg: m.alg, h: c}, nil
}

// sum appends the tag to b and finishes the context.
func (m *mac) sum(b []byte) ([]byte, error) {
	m.key.mu.RLock()
	defer m.key.mu.RUnlock()
	if m.key.deleted {
		m.h.wipe()
		m.h = nil
		return nil, m.key.errDeleted()
	}
	b = m.h.Sum(b)
	m.closeRLocked()
	return b, nil
}

func (m *mac) Finalize(ctx context.Context) ([]byte, error) {
	if m.h == nil {
		return nil, providers.ErrAlreadyFinalized
	}
	return m.sum(nil)
}

func (m *mac) Verify(ctx context.Context, tag []byte) error {
	if m.h == nil {
		return providers.ErrAlreadyFinalized
	}
	var buf [64]byte
	sum, err := m.sum(buf[:0])
	if err != nil {
		return err
	}
	if !hmac.Equal(sum, tag) {
		return providers.ErrInvalidSignature
	}
	return nil
}

func (m *mac) Close() {
	if m.h != nil {
		m.key.mu.RLock()
		m.closeRLocked()
		m.key.mu.RUnlock()
	}
}

// closeRLocked returns the state to the key's pool, or wipes it if the
// key is gone. m.key.mu is held for reading.
func (m *mac) closeRLocked() {
	if m.key.deleted {
		m.h.wipe()
	} else {
		m.key.release(m.alg, m.h)
	}
	m.h = nil
}
