package providers

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"fmt"
	"hash"
)

// Algorithm names a hash function for HMAC. The numeric values are part of
// the wire protocol (docs/protocol.md) and never change.
type Algorithm uint8

// The algorithms a client may ask for. Not every provider has all of them.
const (
	SHA1       Algorithm = 1
	SHA224     Algorithm = 2
	SHA256     Algorithm = 3
	SHA384     Algorithm = 4
	SHA512     Algorithm = 5
	SHA512_224 Algorithm = 6
	SHA512_256 Algorithm = 7
	SHA3_224   Algorithm = 8
	SHA3_256   Algorithm = 9
	SHA3_384   Algorithm = 10
	SHA3_512   Algorithm = 11
)

type algorithmInfo struct {
	name      string
	size      int
	blockSize int
	newHash   func() hash.Hash
}

var algorithms = [...]algorithmInfo{
	SHA1:       {"sha1", sha1.Size, sha1.BlockSize, sha1.New},
	SHA224:     {"sha224", sha256.Size224, sha256.BlockSize, sha256.New224},
	SHA256:     {"sha256", sha256.Size, sha256.BlockSize, sha256.New},
	SHA384:     {"sha384", sha512.Size384, sha512.BlockSize, sha512.New384},
	SHA512:     {"sha512", sha512.Size, sha512.BlockSize, sha512.New},
	SHA512_224: {"sha512_224", sha512.Size224, sha512.BlockSize, sha512.New512_224},
	SHA512_256: {"sha512_256", sha512.Size256, sha512.BlockSize, sha512.New512_256},
	SHA3_224:   {"sha3_224", 28, 144, func() hash.Hash { return sha3.New224() }},
	SHA3_256:   {"sha3_256", 32, 136, func() hash.Hash { return sha3.New256() }},
	SHA3_384:   {"sha3_384", 48, 104, func() hash.Hash { return sha3.New384() }},
	SHA3_512:   {"sha3_512", 64, 72, func() hash.Hash { return sha3.New512() }},
}

// Algorithms lists every algorithm the contract knows, in wire order.
func Algorithms() []Algorithm {
	all := make([]Algorithm, 0, len(algorithms)-1)
	for a := SHA1; a <= SHA3_512; a++ {
		all = append(all, a)
	}
	return all
}

// ParseAlgorithm returns the algorithm with the given name ("sha256",
// "sha3_512", ...). An unknown name is [ErrUnsupportedAlgorithm].
func ParseAlgorithm(name string) (Algorithm, error) {
	for a := SHA1; a <= SHA3_512; a++ {
		if algorithms[a].name == name {
			return a, nil
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrUnsupportedAlgorithm, name)
}

// Valid reports whether a is one of the defined algorithms.
func (a Algorithm) Valid() bool { return a >= SHA1 && a <= SHA3_512 }

// String returns the algorithm's name as ParseAlgorithm accepts it.
func (a Algorithm) String() string {
	if !a.Valid() {
		return fmt.Sprintf("algorithm(%d)", uint8(a))
	}
	return algorithms[a].name
}

// Size is the length of a full tag in bytes; 0 for an invalid algorithm.
func (a Algorithm) Size() int {
	if !a.Valid() {
		return 0
	}
	return algorithms[a].size
}

// BlockSize is the hash's block size in bytes, which bounds HMAC key padding.
func (a Algorithm) BlockSize() int {
	if !a.Valid() {
		return 0
	}
	return algorithms[a].blockSize
}

// NewHash returns a constructor for the plain hash function, for software
// HMAC and for checking hardware output. It panics on an invalid algorithm.
func (a Algorithm) NewHash() func() hash.Hash {
	if !a.Valid() {
		panic("providers: NewHash of " + a.String())
	}
	return algorithms[a].newHash
}

// MarshalText encodes a as its name, so JSON carries "sha256", not 3.
func (a Algorithm) MarshalText() ([]byte, error) {
	if !a.Valid() {
		return nil, fmt.Errorf("%w: %d", ErrUnsupportedAlgorithm, uint8(a))
	}
	return []byte(a.String()), nil
}

// UnmarshalText parses a name as ParseAlgorithm does.
func (a *Algorithm) UnmarshalText(text []byte) error {
	v, err := ParseAlgorithm(string(text))
	if err != nil {
		return err
	}
	*a = v
	return nil
}
