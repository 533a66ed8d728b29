package software

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"hash"
)

// HMAC (RFC 2104) built so that what it keeps per key lives in locked
// memory. crypto/hmac keeps the padded key blocks' hash states on the Go
// heap, where they can be swapped out or dumped and outlive the key.
// Here, for each algorithm, a key keeps two hash states in its locked
// arena: the state after absorbing K⊕ipad and the state after K⊕opad.
// A context restores them into ordinary hash objects with
// UnmarshalBinary, never seeing the padded blocks themselves. A hash
// that cannot marshal its state keeps the two padded blocks instead and
// absorbs them afresh each time; any hash.Hash constructor with a block
// size plugs in either way.

// stateMarshaler is what a hash needs for its keyed states to be saved
// into locked memory without a copy on the heap.
type stateMarshaler interface {
	encoding.BinaryAppender
	encoding.BinaryUnmarshaler
}

// padStates are one algorithm's keyed states for one key: slices of the
// key's locked arena.
type padStates struct {
	newHash func() hash.Hash
	// inner and outer are the marshalled states after K⊕ipad and K⊕opad,
	// or the padded blocks themselves when blocks is set.
	inner, outer []byte
	blocks       bool
	// keepsBlock is set for a hash that keeps the last whole block it
	// was given unprocessed (BLAKE2 must, to flag the final block): its
	// keyed state holds the padded block itself, so a state is scrubbed
	// as soon as it is done with rather than left keyed in a pool.
	keepsBlock  bool
	size, block int
}

// arenaSize is how much locked memory keying newHash takes.
func arenaSize(newHash func() hash.Hash) int {
	h := newHash()
	if m, ok := h.(stateMarshaler); ok {
		if s, err := m.AppendBinary(nil); err == nil {
			return 2 * len(s)
		}
	}
	return 2 * h.BlockSize()
}

// keyStates computes newHash's keyed states for secret into arena, which
// must hold arenaSize(newHash) bytes, using scratch (locked, at least
// two blocks) for the padded key. Neither the key nor the padded blocks
// are copied to the heap or the stack: a key longer than the block is
// hashed into scratch, and the hashes used are scrubbed before they are
// dropped.
func keyStates(newHash func() hash.Hash, secret, arena, scratch []byte) (*padStates, error) {
	h := newHash()
	defer scrub(h)
	block := h.BlockSize()
	ps := &padStates{newHash: newHash, size: h.Size(), block: block}
	if len(scratch) < 2*block {
		return nil, fmt.Errorf("software: scratch of %d bytes for a %d-byte block", len(scratch), block)
	}
	pad := scratch[:block]
	defer clear(scratch)
	clear(pad)
	if len(secret) > block {
		h.Write(secret)
		h.Sum(pad[:0]) // a digest is never longer than its block
		h.Reset()
	} else {
		copy(pad, secret)
	}
	_, marshals := h.(stateMarshaler)
	n := len(arena) / 2
	ps.inner, ps.outer = arena[:n:n], arena[n:]
	for _, x := range []struct {
		xor byte
		dst []byte
	}{{0x36, ps.inner}, {0x5c, ps.outer}} {
		padded := scratch[block : 2*block]
		for i := range padded {
			padded[i] = pad[i] ^ x.xor
		}
		if !marshals {
			copy(x.dst, padded)
			continue
		}
		h.Reset()
		h.Write(padded)
		if s, err := h.(stateMarshaler).AppendBinary(x.dst[:0]); err != nil || len(s) != len(x.dst) || &s[0] != &x.dst[0] {
			return nil, errors.New("software: a hash state did not fit in its locked memory")
		}
		if bytes.Contains(x.dst, padded) {
			ps.keepsBlock = true
		}
	}
	ps.blocks = !marshals
	return ps, nil
}

// scrub resets h and overwrites whatever buffer it keeps, for hashes
// that keep the last block they were given (BLAKE2 does), before it is
// dropped.
func scrub(h hash.Hash) {
	var zeros [256]byte
	h.Reset()
	if b := h.BlockSize(); b <= len(zeros) {
		h.Write(zeros[:b])
	}
	h.Reset()
}

// restore puts h in the keyed state s (inner or outer).
func (ps *padStates) restore(h hash.Hash, s []byte) error {
	if ps.blocks {
		h.Reset()
		h.Write(s)
		return nil
	}
	return h.(encoding.BinaryUnmarshaler).UnmarshalBinary(s)
}

// hmacState is a keyed HMAC computation: a hash.Hash whose Reset goes
// back to the keyed empty state. Its methods that touch the key's locked
// arena (Reset, Sum, Clone) are called with the key's lock held for
// reading, which keeps the arena mapped.
type hmacState struct {
	ps           *padStates
	inner, outer hash.Hash
	// digest holds the inner digest during Sum: a local array would
	// escape to the heap through the hash.Hash interface on every call.
	digest [64]byte
}

var _ hash.Hash = (*hmacState)(nil)

func newHMACState(ps *padStates) (*hmacState, error) {
	s := &hmacState{ps: ps, inner: ps.newHash(), outer: ps.newHash()}
	if err := s.reset(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *hmacState) reset() error { return s.ps.restore(s.inner, s.ps.inner) }

// Reset panics only if a state saved by this process does not load,
// which would be a bug.
func (s *hmacState) Reset() {
	if err := s.reset(); err != nil {
		panic("software: keyed hash state does not load: " + err.Error())
	}
}

func (s *hmacState) Write(p []byte) (int, error) { return s.inner.Write(p) }
func (s *hmacState) Size() int                   { return s.ps.size }
func (s *hmacState) BlockSize() int              { return s.ps.block }

// Sum appends the tag, leaving the inner state as it was, as hash.Hash
// requires.
func (s *hmacState) Sum(b []byte) []byte {
	in := s.inner.Sum(s.digest[:0])
	if err := s.ps.restore(s.outer, s.ps.outer); err != nil {
		panic("software: keyed hash state does not load: " + err.Error())
	}
	s.outer.Write(in)
	clear(s.digest[:])
	b = s.outer.Sum(b)
	// The outer keyed state stays only in locked memory.
	if s.ps.keepsBlock {
		scrub(s.outer)
	} else {
		s.outer.Reset()
	}
	return b
}

// done is called when a computation is over and s goes back to a pool: a
// state that would hold a padded block is scrubbed now, and keyed again
// when it is next taken.
func (s *hmacState) done() {
	if s.ps.keepsBlock {
		scrub(s.inner)
	}
}

// clone copies the computation: the inner hash's state is cloned, never
// the input replayed. Hashes without hash.Cloner (BLAKE2, SM3) are copied
// through their marshalled state, which is cleared at once.
func (s *hmacState) clone() (*hmacState, error) {
	var inner hash.Hash
	switch h := s.inner.(type) {
	case hash.Cloner:
		c, err := h.Clone()
		if err != nil {
			return nil, err
		}
		inner = c.(hash.Hash)
	case encoding.BinaryMarshaler:
		st, err := h.MarshalBinary()
		if err != nil {
			return nil, err
		}
		defer clear(st)
		inner = s.ps.newHash()
		u, ok := inner.(encoding.BinaryUnmarshaler)
		if !ok {
			return nil, fmt.Errorf("software: %T cannot be copied", s.inner)
		}
		if err := u.UnmarshalBinary(st); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("software: %T cannot be copied", s.inner)
	}
	return &hmacState{ps: s.ps, inner: inner, outer: s.ps.newHash()}, nil
}

// wipe leaves neither hash holding anything derived from the key.
func (s *hmacState) wipe() {
	scrub(s.inner)
	scrub(s.outer)
}
