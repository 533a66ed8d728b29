package software

import (
	"encoding"
	"hash"

	"github.com/hmac-agent/hmac-agent/providers"
)

// stateHash is a hash whose running state can be saved and restored.
type stateHash interface {
	hash.Hash
	encoding.BinaryMarshaler
	encoding.BinaryUnmarshaler
}

// stateHMAC is HMAC (RFC 2104) over a hash whose state marshals but which
// crypto/hmac cannot clone: in Go 1.26 crypto/hmac unwraps SHA-3 into an
// internal digest without hash.Cloner, and BLAKE2 (golang.org/x/crypto)
// and SM3 have no Clone at all. Copy must clone state, never replay input,
// so these hashes get this type.
type stateHMAC struct {
	newHash func() stateHash
	inner   stateHash
	outer   stateHash
	// ipad and opad are the marshalled states after absorbing the padded
	// key; they are shared by every clone and never written. Like the key,
	// they let anyone compute the HMAC.
	ipad, opad []byte
	// inSum holds the inner digest during Sum: a buffer on the stack would
	// escape through the interface call and cost an allocation per MAC.
	inSum [64]byte
}

var _ hash.Cloner = (*stateHMAC)(nil)

// stateHMACs are the algorithms keyed with stateHMAC; the rest use
// crypto/hmac, whose states clone.
var stateHMACs = map[providers.Algorithm]bool{
	providers.SHA3_224: true, providers.SHA3_256: true, providers.SHA3_384: true, providers.SHA3_512: true,
	providers.BLAKE2b: true, providers.BLAKE2s: true, providers.SM3: true,
}

func newStateHMAC(alg providers.Algorithm, key []byte) *stateHMAC {
	newPlain := alg.NewHash()
	newHash := func() stateHash {
		h, ok := newPlain().(stateHash)
		if !ok {
			panic("software: " + alg.String() + " state does not marshal")
		}
		return h
	}
	h := &stateHMAC{newHash: newHash, inner: newHash(), outer: newHash()}
	block := h.inner.BlockSize()
	if len(key) > block {
		k := newHash()
		k.Write(key)
		key = k.Sum(nil)
	}
	pad := make([]byte, block)
	defer clear(pad)
	for _, x := range []struct {
		h     stateHash
		xor   byte
		state *[]byte
	}{{h.inner, 0x36, &h.ipad}, {h.outer, 0x5c, &h.opad}} {
		clear(pad)
		copy(pad, key)
		for i := range pad {
			pad[i] ^= x.xor
		}
		x.h.Write(pad)
		*x.state = marshal(x.h)
	}
	return h
}

func (h *stateHMAC) Write(p []byte) (int, error) { return h.inner.Write(p) }
func (h *stateHMAC) Size() int                   { return h.inner.Size() }
func (h *stateHMAC) BlockSize() int              { return h.inner.BlockSize() }

func (h *stateHMAC) Reset() { unmarshal(h.inner, h.ipad) }

// Sum leaves the inner state as it was, as hash.Hash requires.
func (h *stateHMAC) Sum(b []byte) []byte {
	in := h.inner.Sum(h.inSum[:0])
	unmarshal(h.outer, h.opad)
	h.outer.Write(in)
	return h.outer.Sum(b)
}

// Clone copies the inner state; the outer one is restored from opad at
// every Sum, so a fresh hash does.
func (h *stateHMAC) Clone() (hash.Cloner, error) {
	c := *h
	if cl, ok := h.inner.(hash.Cloner); ok {
		inner, err := cl.Clone()
		if err != nil {
			return nil, err
		}
		c.inner = inner.(stateHash)
	} else {
		c.inner = h.newHash()
		state := marshal(h.inner)
		unmarshal(c.inner, state)
		clear(state)
	}
	c.outer = h.newHash()
	return &c, nil
}

// The hashes used here marshal and unmarshal their own states without
// fail; an error would be a broken hash, not bad input.
func marshal(h stateHash) []byte {
	s, err := h.MarshalBinary()
	if err != nil {
		panic("software: hash state does not marshal: " + err.Error())
	}
	return s
}

func unmarshal(h stateHash, s []byte) {
	if err := h.UnmarshalBinary(s); err != nil {
		panic("software: hash state does not unmarshal: " + err.Error())
	}
}
