package software

import (
	"crypto/sha3"
	"hash"
)

// sha3HMAC is HMAC (RFC 2104) over SHA-3. crypto/hmac computes the same
// value, but in Go 1.26 it unwraps SHA-3 into an internal digest that does
// not implement hash.Cloner, so its HMAC-SHA3 states cannot be copied.
// Copy must clone state, never replay input, so SHA-3 gets this type.
type sha3HMAC struct {
	newHash func() *sha3.SHA3
	inner   *sha3.SHA3
	outer   *sha3.SHA3
	// ipad and opad are the marshalled states after absorbing the padded
	// key; they are shared by every clone and never written.
	ipad, opad []byte
}

var _ hash.Cloner = (*sha3HMAC)(nil)

func newSHA3HMAC(newHash func() *sha3.SHA3, key []byte) *sha3HMAC {
	h := &sha3HMAC{newHash: newHash, inner: newHash(), outer: newHash()}
	block := h.inner.BlockSize()
	if len(key) > block {
		k := newHash()
		k.Write(key)
		key = k.Sum(nil)
	}
	pad := make([]byte, block)
	defer clear(pad)
	for _, x := range []struct {
		h     *sha3.SHA3
		xor   byte
		state *[]byte
	}{{h.inner, 0x36, &h.ipad}, {h.outer, 0x5c, &h.opad}} {
		clear(pad)
		copy(pad, key)
		for i := range pad {
			pad[i] ^= x.xor
		}
		x.h.Write(pad)
		s, err := x.h.MarshalBinary()
		if err != nil {
			panic("software: sha3 state does not marshal: " + err.Error())
		}
		*x.state = s
	}
	return h
}

func (h *sha3HMAC) Write(p []byte) (int, error) { return h.inner.Write(p) }
func (h *sha3HMAC) Size() int                   { return h.inner.Size() }
func (h *sha3HMAC) BlockSize() int              { return h.inner.BlockSize() }

func (h *sha3HMAC) Reset() {
	if err := h.inner.UnmarshalBinary(h.ipad); err != nil {
		panic("software: sha3 state does not unmarshal: " + err.Error())
	}
}

// Sum leaves the inner state as it was, as hash.Hash requires.
func (h *sha3HMAC) Sum(b []byte) []byte {
	var buf [64]byte
	in := h.inner.Sum(buf[:0])
	if err := h.outer.UnmarshalBinary(h.opad); err != nil {
		panic("software: sha3 state does not unmarshal: " + err.Error())
	}
	h.outer.Write(in)
	return h.outer.Sum(b)
}

func (h *sha3HMAC) Clone() (hash.Cloner, error) {
	c := *h
	inner, err := h.inner.Clone()
	if err != nil {
		return nil, err
	}
	c.inner = inner.(*sha3.SHA3)
	c.outer = h.newHash()
	return &c, nil
}
