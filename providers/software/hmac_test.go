package software

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding"
	"errors"
	"hash"
	"testing"
)

// lastBlockHash is SHA-256 that, as BLAKE2 does, keeps the last whole
// block it was given unprocessed until more input comes, and does not
// clear its buffer on Reset.
type lastBlockHash struct {
	inner hash.Hash
	buf   [64]byte
	n     int
}

func newLastBlockHash() hash.Hash { return &lastBlockHash{inner: sha256.New()} }

func (h *lastBlockHash) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if h.n == len(h.buf) {
			h.inner.Write(h.buf[:])
			h.n = 0
		}
		c := copy(h.buf[h.n:], p)
		h.n += c
		p = p[c:]
	}
	return total, nil
}

func (h *lastBlockHash) Sum(b []byte) []byte {
	c, _ := h.inner.(hash.Cloner).Clone()
	c.(hash.Hash).Write(h.buf[:h.n])
	return c.(hash.Hash).Sum(b)
}

func (h *lastBlockHash) Reset()         { h.inner.Reset(); h.n = 0 }
func (h *lastBlockHash) Size() int      { return 32 }
func (h *lastBlockHash) BlockSize() int { return 64 }

func (h *lastBlockHash) AppendBinary(b []byte) ([]byte, error) {
	b, err := h.inner.(encoding.BinaryAppender).AppendBinary(b)
	if err != nil {
		return nil, err
	}
	b = append(b, h.buf[:]...)
	return append(b, byte(h.n)), nil
}

func (h *lastBlockHash) UnmarshalBinary(b []byte) error {
	if len(b) < len(h.buf)+1 {
		return errors.New("short state")
	}
	inner, rest := b[:len(b)-len(h.buf)-1], b[len(b)-len(h.buf)-1:]
	if err := h.inner.(encoding.BinaryUnmarshaler).UnmarshalBinary(inner); err != nil {
		return err
	}
	copy(h.buf[:], rest)
	h.n = int(rest[len(h.buf)])
	return nil
}

func (h *lastBlockHash) Clone() (hash.Cloner, error) {
	c, err := h.inner.(hash.Cloner).Clone()
	if err != nil {
		return nil, err
	}
	d := *h
	d.inner = c.(hash.Hash)
	return &d, nil
}

// TestHashKeepingLastBlock: a hash that keeps a padded block in its
// state still gives HMAC's tags, and once a computation is done neither
// of its hash objects, which live on the heap, holds the padded key.
func TestHashKeepingLastBlock(t *testing.T) {
	secret := []byte("a key shorter than the block, and distinctive")
	arena := make([]byte, arenaSize(newLastBlockHash))
	ps, err := keyStates(newLastBlockHash, secret, arena, make([]byte, 128))
	if err != nil {
		t.Fatal(err)
	}
	if !ps.keepsBlock {
		t.Fatal("the padded block in the state was not noticed")
	}
	pads := map[string][]byte{}
	for name, x := range map[string]byte{"ipad": 0x36, "opad": 0x5c} {
		p := make([]byte, 64)
		copy(p, secret)
		for i := range p {
			p[i] ^= x
		}
		// The key's part, and its last bytes alone, which an outer
		// digest written over the block's start leaves.
		pads[name] = p[:len(secret)]
		pads[name+" (tail)"] = p[len(secret)-12 : len(secret)]
	}
	for _, msg := range [][]byte{nil, []byte("short"), bytes.Repeat([]byte("m"), 200)} {
		s, err := newHMACState(ps)
		if err != nil {
			t.Fatal(err)
		}
		s.Write(msg)
		got := s.Sum(nil)
		want := hmac.New(newLastBlockHash, secret)
		want.Write(msg)
		if !bytes.Equal(got, want.Sum(nil)) {
			t.Fatalf("%d-byte message: tag %x, want %x", len(msg), got, want.Sum(nil))
		}
		s.done()
		for name, p := range pads {
			for which, h := range map[string]*lastBlockHash{"inner": s.inner.(*lastBlockHash), "outer": s.outer.(*lastBlockHash)} {
				if bytes.Contains(h.buf[:], p) {
					t.Errorf("%d-byte message: the %s hash still holds K⊕%s", len(msg), which, name)
				}
			}
		}
		if err := s.reset(); err != nil {
			t.Fatal(err)
		}
		s.Write(msg)
		if again := s.Sum(nil); !bytes.Equal(again, got) {
			t.Errorf("%d-byte message: a state reused after done gives %x, want %x", len(msg), again, got)
		}
	}
}
