package hashes

import (
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

// TestAgainstContract: every algorithm has a hash, of the size and block
// size the contract's table (and so the wire protocol) says.
func TestAgainstContract(t *testing.T) {
	for _, alg := range providers.Algorithms() {
		if constructors[alg] == nil {
			t.Errorf("%s: no hash", alg)
			continue
		}
		h := New(alg)()
		if h.Size() != alg.Size() || h.BlockSize() != alg.BlockSize() {
			t.Errorf("%s: hash size %d block %d, contract says %d and %d", alg, h.Size(), h.BlockSize(), alg.Size(), alg.BlockSize())
		}
	}
	if n := len(providers.Algorithms()); n != len(constructors)-1 {
		t.Errorf("%d algorithms, %d hashes", n, len(constructors)-1)
	}
}
