package providers

import "fmt"

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
	MD5        Algorithm = 12
	// BLAKE2b is unkeyed BLAKE2b-512 inside HMAC (RFC 2104), not BLAKE2's
	// own keyed mode: the one size pyca/cryptography's HMAC accepts.
	BLAKE2b Algorithm = 13
	// BLAKE2s is unkeyed BLAKE2s-256 inside HMAC, likewise.
	BLAKE2s Algorithm = 14
	// SM3 is the hash of GB/T 32905-2016 (ISO/IEC 10118-3), TPM_ALG_SM3_256.
	SM3 Algorithm = 15
)

type algorithmInfo struct {
	name      string
	size      int
	blockSize int
}

// algorithms is the one list of algorithms. Every other copy (the Go
// client's constants, the Python client's tables, docs/protocol.md) is
// checked against it by a test.
var algorithms = [...]algorithmInfo{
	SHA1:       {"sha1", 20, 64},
	SHA224:     {"sha224", 28, 64},
	SHA256:     {"sha256", 32, 64},
	SHA384:     {"sha384", 48, 128},
	SHA512:     {"sha512", 64, 128},
	SHA512_224: {"sha512_224", 28, 128},
	SHA512_256: {"sha512_256", 32, 128},
	SHA3_224:   {"sha3_224", 28, 144},
	SHA3_256:   {"sha3_256", 32, 136},
	SHA3_384:   {"sha3_384", 48, 104},
	SHA3_512:   {"sha3_512", 64, 72},
	MD5:        {"md5", 16, 64},
	BLAKE2b:    {"blake2b", 64, 128},
	BLAKE2s:    {"blake2s", 32, 64},
	SM3:        {"sm3", 32, 64},
}

// MaxAlgorithm is the highest defined algorithm, to size arrays indexed by
// Algorithm.
const MaxAlgorithm = Algorithm(len(algorithms) - 1)

const firstAlgorithm, lastAlgorithm = SHA1, MaxAlgorithm

// Algorithms lists every algorithm the contract knows, in wire order.
func Algorithms() []Algorithm {
	all := make([]Algorithm, 0, lastAlgorithm)
	for a := firstAlgorithm; a <= lastAlgorithm; a++ {
		all = append(all, a)
	}
	return all
}

// ParseAlgorithm returns the algorithm with the given name ("sha256",
// "sha3_512", "blake2b", ...). An unknown name is
// [ErrUnsupportedAlgorithm].
func ParseAlgorithm(name string) (Algorithm, error) {
	for a := firstAlgorithm; a <= lastAlgorithm; a++ {
		if algorithms[a].name == name {
			return a, nil
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrUnsupportedAlgorithm, name)
}

// Valid reports whether a is one of the defined algorithms.
func (a Algorithm) Valid() bool { return a >= firstAlgorithm && a <= lastAlgorithm }

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
