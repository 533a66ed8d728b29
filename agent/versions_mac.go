package agent

import (
	"context"
	"crypto/subtle"
	"errors"

	"github.com/hmac-agent/hmac-agent/providers"
)

// multiMAC is a context on several versions of one key at once, for a
// plain name whose key has more than one live version: Finalize gives the
// tag of the first (the current one), and Verify accepts a tag from any.
// Every update goes to every version, so a key costs that many times its
// work per byte while older versions are live; retiring them ends the
// cost. It is not safe for concurrent use, like any providers.MAC.
type multiMAC struct {
	macs     []providers.MAC
	versions []int
	// matched is the version Verify accepted the tag for.
	matched int
}

var _ providers.MAC = (*multiMAC)(nil)

// openVersions opens a context on each of keys, and a multiMAC when
// there is more than one.
func openVersions(ctx context.Context, keys []versionKey, alg providers.Algorithm) (providers.MAC, error) {
	if len(keys) == 1 {
		return keys[0].key.NewMAC(ctx, alg)
	}
	m := &multiMAC{}
	for _, vk := range keys {
		one, err := vk.key.NewMAC(ctx, alg)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.macs = append(m.macs, one)
		m.versions = append(m.versions, vk.n)
	}
	return m, nil
}

func (m *multiMAC) Algorithm() providers.Algorithm { return m.macs[0].Algorithm() }

func (m *multiMAC) Update(ctx context.Context, p []byte) error {
	for _, one := range m.macs {
		if err := one.Update(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

func (m *multiMAC) Copy(ctx context.Context) (providers.MAC, error) {
	c := &multiMAC{versions: m.versions}
	for _, one := range m.macs {
		dup, err := one.Copy(ctx)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.macs = append(c.macs, dup)
	}
	return c, nil
}

func (m *multiMAC) Finalize(ctx context.Context) ([]byte, error) {
	tag, err := m.macs[0].Finalize(ctx)
	for _, one := range m.macs[1:] {
		one.Close()
	}
	return tag, err
}

// Verify checks tag against every version, each in constant time and
// every one of them whatever the earlier ones said, so that the time
// taken does not tell which version a tag matched or how many are live.
// A version whose device fails is reported only if no version matched.
func (m *multiMAC) Verify(ctx context.Context, tag []byte) error {
	var failed error
	match := 0
	for i, one := range m.macs {
		err := one.Verify(ctx, tag)
		ok := subtle.ConstantTimeEq(boolInt(err == nil), 1)
		match = subtle.ConstantTimeSelect(ok&subtle.ConstantTimeEq(int32(match), 0), m.versions[i], match)
		if err != nil && !errors.Is(err, providers.ErrInvalidSignature) && failed == nil {
			failed = err
		}
	}
	m.matched = match
	switch {
	case match != 0:
		return nil
	case failed != nil:
		return failed
	}
	return providers.ErrInvalidSignature
}

func (m *multiMAC) Close() {
	for _, one := range m.macs {
		one.Close()
	}
}

func boolInt(b bool) int32 {
	if b {
		return 1
	}
	return 0
}

// verifyVersions checks a one-shot's tag against every version in keys,
// as multiMAC.Verify does, and returns the version it matched.
func verifyVersions(ctx context.Context, keys []versionKey, alg providers.Algorithm, data, tag []byte) (int, error) {
	var failed error
	match := 0
	for _, vk := range keys {
		err := verifyOne(ctx, vk, alg, data, tag)
		ok := subtle.ConstantTimeEq(boolInt(err == nil), 1)
		match = subtle.ConstantTimeSelect(ok&subtle.ConstantTimeEq(int32(match), 0), vk.n, match)
		if err != nil && err != providers.ErrInvalidSignature && failed == nil {
			failed = err
		}
	}
	switch {
	case match != 0:
		return match, nil
	case failed != nil:
		return 0, failed
	}
	return 0, providers.ErrInvalidSignature
}

// verifyOne checks a one-shot's tag with one key: in its device when it
// can, else in the agent. Its errors are ErrInvalidSignature or the
// provider's own.
func verifyOne(ctx context.Context, vk versionKey, alg providers.Algorithm, data, tag []byte) error {
	var err error
	pause := pauseFor(ctx, data)
	switch {
	case pause != nil:
		var m providers.MAC
		if m, err = vk.key.NewMAC(ctx, alg); err == nil {
			if err = updateInPieces(ctx, m, data, pause); err == nil {
				err = m.Verify(ctx, tag)
			}
			m.Close()
		}
	case vk.verifier != nil:
		err = vk.verifier.VerifyMAC(ctx, alg, data, tag)
	case vk.oneShot != nil:
		var buf [64]byte
		var sum []byte
		if sum, err = vk.oneShot.SumMAC(ctx, alg, data, buf[:0]); err == nil && subtle.ConstantTimeCompare(sum, tag) != 1 {
			err = providers.ErrInvalidSignature
		}
	default:
		var m providers.MAC
		if m, err = vk.key.NewMAC(ctx, alg); err == nil {
			if err = m.Update(ctx, data); err == nil {
				err = m.Verify(ctx, tag)
			}
			m.Close()
		}
	}
	if errors.Is(err, providers.ErrInvalidSignature) {
		return providers.ErrInvalidSignature
	}
	return err
}

// sumOne computes a one-shot's tag with one key; its errors are the
// provider's own.
func sumOne(ctx context.Context, vk versionKey, alg providers.Algorithm, data, dst []byte) ([]byte, error) {
	pause := pauseFor(ctx, data)
	if vk.oneShot != nil && pause == nil {
		return vk.oneShot.SumMAC(ctx, alg, data, dst)
	}
	m, err := vk.key.NewMAC(ctx, alg)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	if err := updateInPieces(ctx, m, data, pause); err != nil {
		return nil, err
	}
	tag, err := m.Finalize(ctx)
	if err != nil {
		return nil, err
	}
	return append(dst, tag...), nil
}

// pauseFor returns the pause ctx carries (providers.WithPause) when data
// is long enough to be hashed in pieces, else nil.
func pauseFor(ctx context.Context, data []byte) func() {
	if len(data) <= providers.TurnInput {
		return nil
	}
	return providers.PauseFrom(ctx)
}

// updateInPieces writes data to m, pausing between pieces of
// providers.TurnInput bytes when pause is not nil: a one-shot over a
// megabyte is then no longer turn at the CPUs than a small one.
func updateInPieces(ctx context.Context, m providers.MAC, data []byte, pause func()) error {
	if pause == nil {
		return m.Update(ctx, data)
	}
	for len(data) > 0 {
		n := min(len(data), providers.TurnInput)
		if err := m.Update(ctx, data[:n]); err != nil {
			return err
		}
		data = data[n:]
		if len(data) > 0 {
			pause()
		}
	}
	return nil
}
