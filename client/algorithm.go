package client

import "github.com/hmac-agent/hmac-agent/providers"

// Algorithm names a hash function for HMAC.
type Algorithm = providers.Algorithm

// The algorithms by name. Which a key can do depends on its provider.
const (
	SHA1       = providers.SHA1
	SHA224     = providers.SHA224
	SHA256     = providers.SHA256
	SHA384     = providers.SHA384
	SHA512     = providers.SHA512
	SHA512_224 = providers.SHA512_224
	SHA512_256 = providers.SHA512_256
	SHA3_224   = providers.SHA3_224
	SHA3_256   = providers.SHA3_256
	SHA3_384   = providers.SHA3_384
	SHA3_512   = providers.SHA3_512
	MD5        = providers.MD5
	BLAKE2b    = providers.BLAKE2b // BLAKE2b-512
	BLAKE2s    = providers.BLAKE2s // BLAKE2s-256
	SM3        = providers.SM3
)

// ParseAlgorithm returns the algorithm named "sha256", "sha3_512", "sm3", ...;
// an unknown name is ErrUnsupportedAlgorithm.
func ParseAlgorithm(name string) (Algorithm, error) { return providers.ParseAlgorithm(name) }

// KeyInfo describes a key; it never holds key bytes.
type KeyInfo = providers.KeyInfo

// VersionInfo describes one version of a key.
type VersionInfo = providers.VersionInfo
