// Package hashes gives the hash function behind each [providers.Algorithm]:
// for the software provider's HMAC, for a TPM's rule that a key longer than
// the block is replaced by its hash, and for tests that check a device's
// output. It stands apart from the contract package so that the contract,
// and the Go client that imports it, need only the standard library;
// BLAKE2 comes from golang.org/x/crypto and SM3 from
// github.com/emmansun/gmsm.
//
// Its functions are safe for concurrent use.
package hashes

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"hash"

	"github.com/emmansun/gmsm/sm3"
	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/blake2s"

	"github.com/hmac-agent/hmac-agent/providers"
)

// constructors is indexed by algorithm; a test checks it against the
// contract's table of sizes and block sizes.
var constructors = [providers.MaxAlgorithm + 1]func() hash.Hash{
	providers.SHA1:       sha1.New,
	providers.SHA224:     sha256.New224,
	providers.SHA256:     sha256.New,
	providers.SHA384:     sha512.New384,
	providers.SHA512:     sha512.New,
	providers.SHA512_224: sha512.New512_224,
	providers.SHA512_256: sha512.New512_256,
	providers.SHA3_224:   func() hash.Hash { return sha3.New224() },
	providers.SHA3_256:   func() hash.Hash { return sha3.New256() },
	providers.SHA3_384:   func() hash.Hash { return sha3.New384() },
	providers.SHA3_512:   func() hash.Hash { return sha3.New512() },
	providers.MD5:        md5.New,
	providers.BLAKE2b:    newBLAKE2b512,
	providers.BLAKE2s:    newBLAKE2s256,
	providers.SM3:        sm3.New,
}

// New returns a constructor for alg's plain hash function. It panics on
// an algorithm the contract does not define.
func New(alg providers.Algorithm) func() hash.Hash {
	if !alg.Valid() {
		panic("hashes: New of " + alg.String())
	}
	return constructors[alg]
}

// The unkeyed constructors fail only for a key longer than BLAKE2 allows.
func newBLAKE2b512() hash.Hash {
	h, err := blake2b.New512(nil)
	if err != nil {
		panic("hashes: blake2b.New512: " + err.Error())
	}
	return h
}

func newBLAKE2s256() hash.Hash {
	h, err := blake2s.New256(nil)
	if err != nil {
		panic("hashes: blake2s.New256: " + err.Error())
	}
	return h
}
