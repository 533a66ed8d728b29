// Package providertest is the conformance suite: the definition of "a
// provider works". It runs against every provider directly and against the
// agent through a real socket, so all of them meet one contract.
//
// A subject is described by a [Subject]; [Run] exercises it with the
// Wycheproof and RFC 2202/4231 vectors, pyca/cryptography's finalize and
// verify semantics, keys of every length around the digest and block
// sizes and random update splits and copies, both checked against
// crypto/hmac (the only check for BLAKE2b and BLAKE2s, which have no
// published HMAC vectors), and concurrent use.
package providertest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/internal/testvectors"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
)

// Subject is what the suite exercises.
type Subject struct {
	// Open opens a context on a key, as providers.Key.NewMAC does.
	Open func(ctx context.Context, key string, alg providers.Algorithm) (providers.MAC, error)
	// Import stores secret under name. The suite imports each distinct
	// secret once and names it after its hash.
	Import func(ctx context.Context, name string, secret []byte) error
	// MAC and VerifyMAC are the one-shot calls. When nil, the suite builds
	// them from Open.
	MAC       func(ctx context.Context, key string, alg providers.Algorithm, data []byte) ([]byte, error)
	VerifyMAC func(ctx context.Context, key string, alg providers.Algorithm, data, tag []byte) error
	// Algorithms the subject supports; every other algorithm must fail at
	// Open with ErrUnsupportedAlgorithm.
	Algorithms []providers.Algorithm
	// Concurrency is how many goroutines the concurrency test uses
	// (default 16).
	Concurrency int
}

// ProviderSubject is the subject for a provider used directly: contexts
// from its keys, keys imported with its Importer.
func ProviderSubject(p interface {
	providers.Provider
	providers.Importer
}, algs []providers.Algorithm) Subject {
	return Subject{
		Open: func(ctx context.Context, name string, alg providers.Algorithm) (providers.MAC, error) {
			k, err := p.Key(ctx, name)
			if err != nil {
				return nil, err
			}
			return k.NewMAC(ctx, alg)
		},
		Import: func(ctx context.Context, name string, secret []byte) error {
			_, err := p.ImportKey(ctx, name, secret)
			return err
		},
		Algorithms: algs,
	}
}

// Run runs the whole suite as subtests of t.
func Run(t *testing.T, s Subject) {
	if s.MAC == nil {
		s.MAC = func(ctx context.Context, key string, alg providers.Algorithm, data []byte) ([]byte, error) {
			m, err := s.Open(ctx, key, alg)
			if err != nil {
				return nil, err
			}
			if err := m.Update(ctx, data); err != nil {
				m.Close()
				return nil, err
			}
			return m.Finalize(ctx)
		}
	}
	if s.VerifyMAC == nil {
		s.VerifyMAC = func(ctx context.Context, key string, alg providers.Algorithm, data, tag []byte) error {
			m, err := s.Open(ctx, key, alg)
			if err != nil {
				return err
			}
			if err := m.Update(ctx, data); err != nil {
				m.Close()
				return err
			}
			return m.Verify(ctx, tag)
		}
	}
	if s.Concurrency == 0 {
		s.Concurrency = 16
	}
	r := &runner{Subject: s, names: map[string]string{}}
	t.Run("Vectors", r.testVectors)
	t.Run("KeyLengths", r.testKeyLengths)
	t.Run("UnsupportedAlgorithm", r.testUnsupported)
	t.Run("KeyNotFound", r.testKeyNotFound)
	t.Run("Finalized", r.testFinalized)
	t.Run("VerifyLengths", r.testVerifyLengths)
	t.Run("EmptyKeyAndMessage", r.testEmpty)
	t.Run("RandomSplitsAndCopies", r.testRandomSplits)
	t.Run("LargeUpdatesAndCopies", r.testLargeUpdates)
	t.Run("CopyIndependent", r.testCopyIndependent)
	t.Run("Concurrent", r.testConcurrent)
}

type runner struct {
	Subject
	mu    sync.Mutex
	names map[string]string // hex(sha256(secret)) -> key name
}

// key returns the name of a key holding secret, importing it once.
func (r *runner) key(t testing.TB, secret []byte) string {
	t.Helper()
	sum := sha256.Sum256(secret)
	id := hex.EncodeToString(sum[:8])
	r.mu.Lock()
	defer r.mu.Unlock()
	if name, ok := r.names[id]; ok {
		return name
	}
	name := "conformance-" + id
	if err := r.Import(context.Background(), name, secret); err != nil {
		t.Fatalf("import %s (%d bytes): %v", name, len(secret), err)
	}
	r.names[id] = name
	return name
}

func (r *runner) supports(alg providers.Algorithm) bool {
	for _, a := range r.Algorithms {
		if a == alg {
			return true
		}
	}
	return false
}

func reference(alg providers.Algorithm, key, msg []byte) []byte {
	h := hmac.New(hashes.New(alg), key)
	h.Write(msg)
	return h.Sum(nil)
}

func (r *runner) testVectors(t *testing.T) {
	for _, alg := range r.Algorithms {
		t.Run(alg.String(), func(t *testing.T) {
			wp, err := testvectors.Wycheproof(alg)
			if err != nil {
				t.Fatal(err)
			}
			rfc, err := testvectors.RFC(alg)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, v := range append(rfc, wp...) {
				r.checkVector(t, v)
				n++
			}
			t.Logf("%s: %d vectors (%d RFC)", alg, n, len(rfc))
		})
	}
}

// testKeyLengths checks keys of every length where HMAC changes its
// handling (empty, around the digest size, around the block size, longer
// than a block) with a random message in random pieces, against
// crypto/hmac, through every path checkVector takes.
func (r *runner) testKeyLengths(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, alg := range r.Algorithms {
		t.Run(alg.String(), func(t *testing.T) {
			n := 0
			size, block := alg.Size(), alg.BlockSize()
			seen := map[int]bool{}
			for _, keyLen := range []int{0, 1, size - 1, size, size + 1, block - 1, block, block + 1, 2*block + 1} {
				if seen[keyLen] {
					continue
				}
				seen[keyLen] = true
				// The key bytes depend only on the length, so every
				// algorithm shares one key of each length.
				secret := bytes.Repeat([]byte{byte(keyLen)}, keyLen)
				for i := range secret {
					secret[i] += byte(i)
				}
				for range 3 {
					msg := make([]byte, rng.IntN(3*block+1))
					fill(rng, msg)
					tag := reference(alg, secret, msg)
					v := testvectors.Vector{
						Source: fmt.Sprintf("%s key of %d bytes, message of %d", alg, keyLen, len(msg)),
						Alg:    alg, Key: secret, Msg: msg, Tag: tag, Valid: true,
					}
					r.checkVector(t, v)
					tag = bytes.Clone(tag)
					tag[rng.IntN(len(tag))] ^= 1 << rng.IntN(8)
					v.Tag, v.Valid = tag, false
					r.checkVector(t, v)
					n += 2
				}
			}
			t.Logf("%s: %d vectors against crypto/hmac", alg, n)
		})
	}
}

func (r *runner) checkVector(t *testing.T, v testvectors.Vector) {
	t.Helper()
	ctx := context.Background()
	name := r.key(t, v.Key)

	// The context path, with the message split in two.
	m, err := r.Open(ctx, name, v.Alg)
	if err != nil {
		t.Fatalf("%s: open: %v", v.Source, err)
	}
	half := len(v.Msg) / 2
	if err := m.Update(ctx, v.Msg[:half]); err != nil {
		t.Fatalf("%s: update: %v", v.Source, err)
	}
	if err := m.Update(ctx, v.Msg[half:]); err != nil {
		t.Fatalf("%s: update: %v", v.Source, err)
	}
	full, err := m.Finalize(ctx)
	if err != nil {
		t.Fatalf("%s: finalize: %v", v.Source, err)
	}
	if len(full) != v.Alg.Size() {
		t.Fatalf("%s: tag of %d bytes, want %d", v.Source, len(full), v.Alg.Size())
	}
	prefixMatches := bytes.Equal(full[:len(v.Tag)], v.Tag)
	if v.Valid != prefixMatches {
		t.Errorf("%s: valid=%v but tag prefix match=%v (got %x, vector %x)", v.Source, v.Valid, prefixMatches, full, v.Tag)
	}

	oneShot, err := r.MAC(ctx, name, v.Alg, v.Msg)
	if err != nil {
		t.Fatalf("%s: one-shot MAC: %v", v.Source, err)
	}
	if !bytes.Equal(oneShot, full) {
		t.Errorf("%s: one-shot tag %x differs from context tag %x", v.Source, oneShot, full)
	}
	if v.Truncated() {
		return
	}
	// Full-length tags go through Verify and VerifyMAC as well.
	m, err = r.Open(ctx, name, v.Alg)
	if err != nil {
		t.Fatalf("%s: open: %v", v.Source, err)
	}
	if err := m.Update(ctx, v.Msg); err != nil {
		t.Fatalf("%s: update: %v", v.Source, err)
	}
	checkVerify(t, v, "Verify", m.Verify(ctx, v.Tag))
	checkVerify(t, v, "VerifyMAC", r.VerifyMAC(ctx, name, v.Alg, v.Msg, v.Tag))
}

func checkVerify(t *testing.T, v testvectors.Vector, what string, err error) {
	t.Helper()
	switch {
	case v.Valid && err != nil:
		t.Errorf("%s: %s of a valid tag: %v", v.Source, what, err)
	case !v.Valid && !errors.Is(err, providers.ErrInvalidSignature):
		t.Errorf("%s: %s of an invalid tag = %v, want ErrInvalidSignature", v.Source, what, err)
	}
}

func (r *runner) testUnsupported(t *testing.T) {
	ctx := context.Background()
	name := r.key(t, []byte("unsupported-algorithm-test-key-0"))
	for _, alg := range append(providers.Algorithms(), 0, providers.MaxAlgorithm+1, 200) {
		if r.supports(alg) {
			continue
		}
		m, err := r.Open(ctx, name, alg)
		if !errors.Is(err, providers.ErrUnsupportedAlgorithm) {
			t.Errorf("Open(%s) = %v, want ErrUnsupportedAlgorithm", alg, err)
		}
		if m != nil {
			m.Close()
		}
		if _, err := r.MAC(ctx, name, alg, []byte("x")); !errors.Is(err, providers.ErrUnsupportedAlgorithm) {
			t.Errorf("MAC(%s) = %v, want ErrUnsupportedAlgorithm", alg, err)
		}
	}
}

func (r *runner) testKeyNotFound(t *testing.T) {
	ctx := context.Background()
	alg := r.Algorithms[0]
	if _, err := r.Open(ctx, "no-such-key", alg); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("Open of a missing key = %v, want ErrKeyNotFound", err)
	}
	if _, err := r.MAC(ctx, "no-such-key", alg, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("MAC of a missing key = %v, want ErrKeyNotFound", err)
	}
}

// finishedBy are the ways a context ends.
var finishedBy = map[string]func(ctx context.Context, m providers.MAC, alg providers.Algorithm) error{
	"Finalize": func(ctx context.Context, m providers.MAC, _ providers.Algorithm) error {
		_, err := m.Finalize(ctx)
		return err
	},
	"VerifyOK": nil, // filled in by testFinalized, which knows the tag
	"VerifyFailed": func(ctx context.Context, m providers.MAC, alg providers.Algorithm) error {
		if err := m.Verify(ctx, make([]byte, alg.Size())); !errors.Is(err, providers.ErrInvalidSignature) {
			return fmt.Errorf("verify of a zero tag = %v, want ErrInvalidSignature", err)
		}
		return nil
	},
	"VerifyWrongLength": func(ctx context.Context, m providers.MAC, alg providers.Algorithm) error {
		if err := m.Verify(ctx, []byte{1, 2, 3}); !errors.Is(err, providers.ErrInvalidSignature) {
			return fmt.Errorf("verify of a short tag = %v, want ErrInvalidSignature", err)
		}
		return nil
	},
}

func (r *runner) testFinalized(t *testing.T) {
	ctx := context.Background()
	secret := []byte("finalized-test-key-0123456789abcdef")
	name := r.key(t, secret)
	for _, alg := range r.Algorithms {
		msg := []byte("message")
		want := reference(alg, secret, msg)
		for how, finish := range finishedBy {
			if finish == nil {
				finish = func(ctx context.Context, m providers.MAC, _ providers.Algorithm) error { return m.Verify(ctx, want) }
			}
			m, err := r.Open(ctx, name, alg)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Update(ctx, msg); err != nil {
				t.Fatal(err)
			}
			if err := finish(ctx, m, alg); err != nil {
				t.Fatalf("%s %s: %v", alg, how, err)
			}
			if err := m.Update(ctx, []byte("more")); !errors.Is(err, providers.ErrAlreadyFinalized) {
				t.Errorf("%s: Update after %s = %v, want ErrAlreadyFinalized", alg, how, err)
			}
			if c, err := m.Copy(ctx); !errors.Is(err, providers.ErrAlreadyFinalized) {
				t.Errorf("%s: Copy after %s = %v, want ErrAlreadyFinalized", alg, how, err)
				if c != nil {
					c.Close()
				}
			}
			if _, err := m.Finalize(ctx); !errors.Is(err, providers.ErrAlreadyFinalized) {
				t.Errorf("%s: Finalize after %s = %v, want ErrAlreadyFinalized", alg, how, err)
			}
			if err := m.Verify(ctx, want); !errors.Is(err, providers.ErrAlreadyFinalized) {
				t.Errorf("%s: Verify after %s = %v, want ErrAlreadyFinalized", alg, how, err)
			}
			m.Close()
			m.Close() // idempotent
		}
	}
}

func (r *runner) testVerifyLengths(t *testing.T) {
	ctx := context.Background()
	secret := []byte("verify-lengths-key-0123456789abcdef")
	name := r.key(t, secret)
	for _, alg := range r.Algorithms {
		msg := []byte("lengths")
		full := reference(alg, secret, msg)
		for _, tag := range [][]byte{nil, {}, full[:len(full)-1], full[:len(full)/2], append(append([]byte(nil), full...), 0)} {
			if err := r.VerifyMAC(ctx, name, alg, msg, tag); !errors.Is(err, providers.ErrInvalidSignature) {
				t.Errorf("%s: VerifyMAC with a %d-byte tag = %v, want ErrInvalidSignature", alg, len(tag), err)
			}
		}
		if err := r.VerifyMAC(ctx, name, alg, msg, full); err != nil {
			t.Errorf("%s: VerifyMAC of the right tag: %v", alg, err)
		}
	}
}

func (r *runner) testEmpty(t *testing.T) {
	ctx := context.Background()
	name := r.key(t, []byte{})
	for _, alg := range r.Algorithms {
		want := reference(alg, nil, nil)
		got, err := r.MAC(ctx, name, alg, nil)
		if err != nil {
			t.Fatalf("%s: empty key, empty message: %v", alg, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: empty key, empty message: %x, want %x", alg, got, want)
		}
		m, err := r.Open(ctx, name, alg)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := m.Update(ctx, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Verify(ctx, want); err != nil {
			t.Errorf("%s: verify after empty updates: %v", alg, err)
		}
	}
}

// testRandomSplits feeds random messages in random pieces, copying at random
// points, and checks every branch against crypto/hmac.
func (r *runner) testRandomSplits(t *testing.T) {
	r.splitsAndCopies(t, r.Algorithms, 8, 5000, 1200)
}

// testLargeUpdates is testRandomSplits with updates larger than a server's
// read buffer, which a server may hand to the provider instead of copying.
func (r *runner) testLargeUpdates(t *testing.T) {
	r.splitsAndCopies(t, r.Algorithms[len(r.Algorithms)-1:], 3, 600<<10, 96<<10)
}

// splitsAndCopies streams random messages of up to maxMsg bytes in random
// updates of up to maxChunk, copying at random points, and checks the
// original and every copy. A context that keeps its input
// (providers.Retainer) gets each update in a frame.Buffer of its own,
// released by the suite at once and scribbled on as its last reference
// goes, as a reused frame would be: every tag must still be right, and
// every buffer must come back once the contexts are finished.
func (r *runner) splitsAndCopies(t *testing.T, algs []providers.Algorithm, rounds, maxMsg, maxChunk int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, alg := range algs {
		for round := range rounds {
			secret := make([]byte, rng.IntN(2*alg.BlockSize()+1))
			fill(rng, secret)
			name := r.key(t, secret)
			msg := make([]byte, rng.IntN(maxMsg))
			fill(rng, msg)

			m, err := r.Open(ctx, name, alg)
			if err != nil {
				t.Fatal(err)
			}
			type branch struct {
				m   providers.MAC
				pos int
			}
			var copies []branch
			var handed []*frame.Buffer
			update := func(m providers.MAC, p []byte) error {
				rt, ok := m.(providers.Retainer)
				if !ok {
					return m.Update(ctx, p)
				}
				p = bytes.Clone(p)
				b := frame.New(p, func(p []byte) { clear(p) })
				handed = append(handed, b)
				defer b.Release()
				return rt.UpdateRetained(ctx, p, b)
			}
			for pos := 0; pos < len(msg); {
				n := min(len(msg)-pos, rng.IntN(maxChunk))
				if err := update(m, msg[pos:pos+n]); err != nil {
					t.Fatal(err)
				}
				pos += n
				if rng.IntN(3) == 0 {
					c, err := m.Copy(ctx)
					if err != nil {
						t.Fatalf("%s: copy at %d: %v", alg, pos, err)
					}
					copies = append(copies, branch{c, pos})
				}
			}
			got, err := m.Finalize(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := reference(alg, secret, msg); !bytes.Equal(got, want) {
				t.Fatalf("%s round %d: %x, want %x", alg, round, got, want)
			}
			for _, b := range copies {
				// Each copy diverges: it gets a suffix of its own.
				suffix := []byte(fmt.Sprintf("branch at %d", b.pos))
				if err := update(b.m, suffix); err != nil {
					t.Fatal(err)
				}
				got, err := b.m.Finalize(ctx)
				if err != nil {
					t.Fatal(err)
				}
				want := reference(alg, secret, append(append([]byte(nil), msg[:b.pos]...), suffix...))
				if !bytes.Equal(got, want) {
					t.Fatalf("%s round %d: copy at %d: %x, want %x", alg, round, b.pos, got, want)
				}
			}
			for i, b := range handed {
				if b.Held() {
					t.Fatalf("%s round %d: buffer %d of %d still held after its contexts finished", alg, round, i, len(handed))
				}
			}
		}
	}
}

func (r *runner) testCopyIndependent(t *testing.T) {
	ctx := context.Background()
	secret := []byte("copy-independent-key-0123456789ab")
	name := r.key(t, secret)
	alg := r.Algorithms[len(r.Algorithms)-1]
	m, err := r.Open(ctx, name, alg)
	if err != nil {
		t.Fatal(err)
	}
	m.Update(ctx, []byte("abc"))
	c, err := m.Copy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Finishing the original must leave the copy usable, and the other
	// way round for a copy of the copy.
	if _, err := m.Finalize(ctx); err != nil {
		t.Fatal(err)
	}
	cc, err := c.Copy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Verify(ctx, reference(alg, secret, []byte("abc"))); err != nil {
		t.Errorf("copy after the original finished: %v", err)
	}
	cc.Update(ctx, []byte("def"))
	if err := cc.Verify(ctx, reference(alg, secret, []byte("abcdef"))); err != nil {
		t.Errorf("copy of a copy: %v", err)
	}
}

func (r *runner) testConcurrent(t *testing.T) {
	ctx := context.Background()
	secret := []byte("concurrent-key-0123456789abcdef!")
	name := r.key(t, secret)
	var wg sync.WaitGroup
	errs := make(chan error, r.Concurrency)
	for g := range r.Concurrency {
		wg.Go(func() {
			alg := r.Algorithms[g%len(r.Algorithms)]
			for i := range 20 {
				msg := []byte(fmt.Sprintf("goroutine %d message %d", g, i))
				want := reference(alg, secret, msg)
				m, err := r.Open(ctx, name, alg)
				if err != nil {
					errs <- err
					return
				}
				m.Update(ctx, msg[:5])
				c, err := m.Copy(ctx)
				if err != nil {
					errs <- err
					return
				}
				m.Update(ctx, msg[5:])
				c.Update(ctx, msg[5:])
				if err := m.Verify(ctx, want); err != nil {
					errs <- fmt.Errorf("goroutine %d: %w", g, err)
					return
				}
				got, err := c.Finalize(ctx)
				if err != nil || !bytes.Equal(got, want) {
					errs <- fmt.Errorf("goroutine %d: copy: %x, %v", g, got, err)
					return
				}
				if got, err := r.MAC(ctx, name, alg, msg); err != nil || !bytes.Equal(got, want) {
					errs <- fmt.Errorf("goroutine %d: one-shot: %x, %v", g, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func fill(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}
