package testvectors

import (
	"bytes"
	"crypto/hmac"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
)

// TestCounts pins how many cases each algorithm has, so that a file that
// goes missing or an algorithm left out of the tables fails here rather
// than running no vectors.
func TestCounts(t *testing.T) {
	want := map[providers.Algorithm][2]int{ // Wycheproof, RFC
		providers.SHA1: {170, 7}, providers.SHA224: {172, 6}, providers.SHA256: {174, 6},
		providers.SHA384: {174, 6}, providers.SHA512: {174, 6},
		providers.SHA512_224: {173, 0}, providers.SHA512_256: {175, 0},
		providers.SHA3_224: {172, 0}, providers.SHA3_256: {174, 0}, providers.SHA3_384: {174, 0}, providers.SHA3_512: {174, 0},
		providers.MD5: {0, 7}, providers.BLAKE2b: {0, 0}, providers.BLAKE2s: {0, 0}, providers.SM3: {174, 0},
	}
	for _, alg := range providers.Algorithms() {
		w, ok := want[alg]
		if !ok {
			t.Errorf("%s: no expected count; add one", alg)
			continue
		}
		wp, err := Wycheproof(alg)
		if err != nil {
			t.Fatal(err)
		}
		rfc, err := RFC(alg)
		if err != nil {
			t.Fatal(err)
		}
		if len(wp) != w[0] || len(rfc) != w[1] {
			t.Errorf("%s: %d Wycheproof and %d RFC cases, want %d and %d", alg, len(wp), len(rfc), w[0], w[1])
		}
	}
}

// TestAgainstHashTable checks every vector against crypto/hmac over the
// hash constructors of providers' algorithm table, so a wrong constructor,
// size or block size there (or a mistyped vector here) shows before any
// provider runs.
func TestAgainstHashTable(t *testing.T) {
	for _, alg := range providers.Algorithms() {
		wp, _ := Wycheproof(alg)
		rfc, err := RFC(alg)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range append(rfc, wp...) {
			h := hmac.New(hashes.New(alg), v.Key)
			h.Write(v.Msg)
			sum := h.Sum(nil)
			if len(sum) != alg.Size() || h.BlockSize() != alg.BlockSize() {
				t.Fatalf("%s: hash gives %d-byte tags and %d-byte blocks, table says %d and %d",
					alg, len(sum), h.BlockSize(), alg.Size(), alg.BlockSize())
			}
			if got := bytes.Equal(sum[:len(v.Tag)], v.Tag); got != v.Valid {
				t.Errorf("%s: matches=%v, valid=%v", v.Source, got, v.Valid)
			}
		}
	}
}
