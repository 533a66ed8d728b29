//go:build cgo

package pkcs11

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Changing a key's versions: rotation with its claim protocol, and
// retirement. How versions are stored, and why so, is in versions.go.

// errLostClaim: another rotation claimed the same number.
var errLostClaim = errors.New("pkcs11: another rotation claimed the version number")

// RotateKey makes a new version of the named key current: generated in
// the token with CKM_GENERIC_SECRET_KEY_GEN when secret is nil (length 0:
// DefaultKeyLength), else imported as ImportKey does. Its number is one
// no other agent on the token can get, even when rotating at once.
func (p *Provider) RotateKey(ctx context.Context, name string, secret []byte, length int) (providers.VersionInfo, error) {
	if err := providers.CheckKeyName(name); err != nil {
		return providers.VersionInfo{}, fmt.Errorf("pkcs11: %w", err)
	}
	var value []byte
	if secret != nil {
		if len(secret) > maxKeyLength {
			return providers.VersionInfo{}, fmt.Errorf("pkcs11: key of %d bytes: %w: at most %d", len(secret), providers.ErrInvalidArgument, maxKeyLength)
		}
		value = padKey(secret)
		defer clear(value)
	} else {
		if length == 0 {
			length = DefaultKeyLength
		}
		if length < 1 || length > maxKeyLength {
			return providers.VersionInfo{}, fmt.Errorf("pkcs11: key length %d: %w: must be 1 to %d bytes", length, providers.ErrInvalidArgument, maxKeyLength)
		}
		if err := p.keepsAlgorithms(ctx, name, length); err != nil {
			return providers.VersionInfo{}, err
		}
	}
	for attempt := 0; ; attempt++ {
		var made versionRecord
		err := p.withSession(ctx, func(s *session) (err error) {
			made, err = p.rotateOnce(s, name, value, length)
			return err
		})
		if err == nil {
			p.invalidate(nil, named(name)) // the name means the new version now
			return providers.VersionInfo{Version: made.Version, State: providers.VersionCurrent, Created: made.Created}, nil
		}
		if !errors.Is(err, errLostClaim) {
			if rv(err) != 0 {
				return providers.VersionInfo{}, classify("rotate key "+name, err)
			}
			return providers.VersionInfo{}, err
		}
		if attempt+1 == maxRotateAttempts {
			return providers.VersionInfo{}, fmt.Errorf("pkcs11: rotate key %q: %w: other rotations kept taking the version number", name, providers.ErrUnavailable)
		}
		// Two claimants that saw each other both let go: wait a random
		// while so that one of them gets there first next time.
		wait, _ := rand.Int(rand.Reader, big.NewInt(int64(5+attempt*10)))
		select {
		case <-ctx.Done():
			return providers.VersionInfo{}, fmt.Errorf("pkcs11: rotate key %q: %w: %w", name, providers.ErrUnavailable, ctx.Err())
		case <-time.After(time.Duration(1+wait.Int64()) * time.Millisecond):
		}
	}
}

// rotateOnce claims a number, makes the key object and commits the
// claim, or undoes what it did. errLostClaim if another claim names the
// same number.
func (p *Provider) rotateOnce(s *session, name string, value []byte, length int) (versionRecord, error) {
	p.mod.objects.Lock()
	defer p.mod.objects.Unlock()
	recs, err := p.readRecords(s, name)
	if err != nil {
		return versionRecord{}, err
	}
	newest := 0
	for _, r := range recs {
		if r.pending && time.Since(r.Created) > staleClaim {
			// A rotation that stopped half way: its number stays
			// unused, and so does its key object, if it made one.
			p.destroyAll(s, versionTemplate(versionLabel(name, r.Version), r.ID))
			p.ctx.DestroyObject(s.h, r.h)
			continue
		}
		newest = max(newest, r.Version)
	}
	if newest == 0 {
		// A key made before versions has no record: it is version 1.
		es, err := p.readVersions(s, name)
		if err != nil {
			return versionRecord{}, err
		}
		newest = es[len(es)-1].Version
	}
	n := newest + 1
	if n > maxKeyVersion {
		return versionRecord{}, providers.Publicf(providers.ErrLimit, "key %q has had %d versions, the most there can be", name, maxKeyVersion)
	}
	nonce := rand.Text()
	claimed := time.Now()
	rec := versionRecord{Version: n, ID: []byte(versionLabel(name, n) + "~" + nonce), Created: claimed.UTC()}
	value0, err := json.Marshal(rec)
	if err != nil {
		return versionRecord{}, err
	}
	claim, err := p.createObject(s, recordTemplate(name, recordLabel(name, n)+"~"+nonce, value0))
	if err != nil {
		return versionRecord{}, err
	}
	// From here every failure removes the claim; a session too broken
	// for that leaves it to go stale.
	recs, err = p.readRecords(s, name)
	if err != nil {
		p.ctx.DestroyObject(s.h, claim)
		return versionRecord{}, err
	}
	for _, r := range recs {
		if r.Version == n && r.h != claim {
			p.ctx.DestroyObject(s.h, claim)
			return versionRecord{}, errLostClaim
		}
	}
	tmpl := keyTemplate(versionLabel(name, n))
	for i, a := range tmpl {
		if a.Type == p11.CKA_ID {
			tmpl[i] = p11.NewAttribute(p11.CKA_ID, rec.ID)
		}
	}
	var obj p11.ObjectHandle
	if value != nil {
		obj, err = p.createObject(s, append(tmpl, p11.NewAttribute(p11.CKA_VALUE, value)))
	} else {
		obj, err = p.generateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_GENERIC_SECRET_KEY_GEN, nil)},
			append(tmpl, p11.NewAttribute(p11.CKA_VALUE_LEN, length)))
	}
	if err != nil {
		p.ctx.DestroyObject(s.h, claim)
		return versionRecord{}, err
	}
	if time.Since(claimed) > staleClaim/2 {
		// Another rotation may soon take this claim for stale.
		p.ctx.DestroyObject(s.h, obj)
		p.ctx.DestroyObject(s.h, claim)
		return versionRecord{}, fmt.Errorf("pkcs11: rotate key %q: %w: the token took too long", name, providers.ErrUnavailable)
	}
	if err := p.ctx.SetAttributeValue(s.h, claim, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, recordLabel(name, n))}); err != nil {
		p.ctx.DestroyObject(s.h, obj)
		p.ctx.DestroyObject(s.h, claim)
		return versionRecord{}, err
	}
	return rec, nil
}

// recordTemplate is a new record's template: a private token object,
// readable only after login.
func recordTemplate(name, label string, value []byte) []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_MODIFIABLE, true),
		p11.NewAttribute(p11.CKA_APPLICATION, versionApplication(name)),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_VALUE, value),
	}
}

// destroyAll destroys every object tmpl finds and returns every handle
// destroyed, also when it fails part way: a key cached under any of them
// must be dropped (invalidate), not just the first.
func (p *Provider) destroyAll(s *session, tmpl []*p11.Attribute) ([]p11.ObjectHandle, error) {
	hs, err := p.findObjects(s, tmpl, 100)
	if err != nil {
		return nil, err
	}
	var destroyed []p11.ObjectHandle
	for _, h := range hs {
		if err := p.ctx.DestroyObject(s.h, h); err != nil && !handleStale(err) {
			return destroyed, err
		}
		destroyed = append(destroyed, h)
	}
	return destroyed, nil
}

// RetireVersion records that version n stops verifying, and with destroy
// deletes its key object after recording that. The current version is
// refused with ErrInvalidArgument. A destroyed version stays destroyed;
// destroying it again deletes an object a crash may have left.
func (p *Provider) RetireVersion(ctx context.Context, name string, n int, destroy bool) error {
	if err := providers.CheckKeyName(name); err != nil {
		return fmt.Errorf("pkcs11: %w", err)
	}
	var deleted []p11.ObjectHandle
	err := p.withSession(ctx, func(s *session) error {
		p.mod.objects.Lock()
		defer p.mod.objects.Unlock()
		es, err := p.readVersions(s, name)
		if err != nil {
			return err
		}
		e := findVersion(es, n)
		if e == nil {
			return providers.Publicf(providers.ErrKeyNotFound, "key %q has no version %d", name, n)
		}
		if e.State == providers.VersionCurrent {
			return providers.Publicf(providers.ErrInvalidArgument, "version %d of key %q is current: rotate before retiring it", n, name)
		}
		// States are recorded by adding a record, never by changing
		// one: tokens may keep a data object's value read-only, and
		// agents recording at once then cannot overwrite each other.
		rec := versionRecord{Version: n, Retired: e.record.Retired, Destroyed: e.record.Destroyed || destroy}
		if rec.Retired.IsZero() {
			rec.Retired = time.Now().UTC()
		}
		if len(e.records) == 0 || !rec.Retired.Equal(e.record.Retired) || rec.Destroyed != e.record.Destroyed {
			data, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			if _, err := p.createObject(s, recordTemplate(name, recordLabel(name, n), data)); err != nil {
				return err
			}
		}
		if rec.Destroyed {
			// Recorded first: a crash now leaves a version that reads
			// as destroyed and whose object the next destroy removes.
			deleted, err = p.destroyAll(s, versionTemplate(e.label, e.id))
			return err
		}
		return nil
	})
	if destroy {
		p.invalidate(deleted, named(recordLabel(name, n)))
	}
	if err != nil && rv(err) != 0 {
		return classify(fmt.Sprintf("retire version %d of key %s", n, name), err)
	}
	return err
}

// keepsAlgorithms refuses a generated version of length bytes that could
// not do an algorithm the key's current version does: the token refuses
// keys shorter than the digest, and a generated key cannot be padded as
// an imported one is, so such a rotation would silently take a hash away
// from every client that uses it.
func (p *Provider) keepsAlgorithms(ctx context.Context, name string, length int) error {
	cur, err := p.Key(ctx, name)
	if err != nil {
		return err
	}
	next := p.keyAlgorithms(p11.CKK_GENERIC_SECRET, length)
	for _, alg := range p.algs {
		if cur.Supports(alg) && !next[alg] {
			return providers.Publicf(providers.ErrInvalidArgument,
				"a %d-byte version of key %q could not do %s, which its current version does; give a length of at least %d bytes", length, name, alg, alg.Size())
		}
	}
	return nil
}
