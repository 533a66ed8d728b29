//go:build cgo

package pkcs11

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Key versions live in the token, so that every agent sharing it (a
// network HSM) sees the same ones:
//
//   - Version 1 is the key object labelled NAME, as keys were made before
//     versions existed; such keys load unchanged.
//   - Version N >= 2 is a key object labelled NAME@N, with a CKA_ID unique
//     to the rotation that made it ("NAME@N~" and a random nonce).
//   - Each version may have a record: a CKO_DATA object with
//     CKA_APPLICATION "hmac-agent/versions/NAME", labelled NAME@N, whose
//     value holds the version's CKA_ID, when it was made and when it was
//     retired or destroyed.
//
// A token has no transactions and no way to create an object only if its
// label is free, so a rotation claims its number first: it creates a
// record labelled NAME@N~nonce (pending), then reads the key's records
// again. If any other record, pending or committed, names N, it removes its
// claim and tries again later; otherwise no other rotation can win N
// (whichever of two claimants created its claim second sees the first), so
// it makes the key object and commits the claim by relabelling it NAME@N.
// Readers see committed records only. The numbers chosen are one past
// every claim seen, so a crashed rotation's claim leaves a gap in the
// numbers and never blocks the next rotation; claims older than
// staleClaim are removed by later rotations.
//
// A record's states only ever move forward (retired, then destroyed), so
// two agents writing one at once cannot undo each other: whichever write
// lands, the version is at least retired, and a version whose object is
// gone reads as destroyed.

// staleClaim is how old an uncommitted claim must be before another
// rotation removes it. A rotation gives up without committing once its
// claim is half that old, so a live claim is never removed.
var staleClaim = 2 * time.Minute

// maxRotateAttempts bounds how often a rotation tries again after losing a
// number to another agent.
const maxRotateAttempts = 10

// maxKeyVersion bounds version numbers, so that a hostile or broken
// record cannot make readers walk or count past what a key can have.
const maxKeyVersion = 1 << 30

// versionApplication is the CKA_APPLICATION of the named key's records.
func versionApplication(name string) string { return "hmac-agent/versions/" + name }

// versionLabel is the label of version n's key object and record.
func versionLabel(name string, n int) string {
	if n == 1 {
		return name
	}
	return name + "@" + strconv.Itoa(n)
}

// recordLabel is the label of version n's committed record.
func recordLabel(name string, n int) string { return name + "@" + strconv.Itoa(n) }

// splitVersion splits NAME@N, N a positive decimal without sign or
// leading zero.
func splitVersion(ref string) (name string, n int, ok bool) {
	i := strings.LastIndexByte(ref, '@')
	if i <= 0 || i == len(ref)-1 || ref[i+1] == '0' {
		return "", 0, false
	}
	n, err := strconv.Atoi(ref[i+1:])
	if err != nil || n < 1 || n > maxKeyVersion || strings.ContainsAny(ref[i+1:], "+-") {
		return "", 0, false
	}
	return ref[:i], n, true
}

// versionRecord is the value of a version's record.
type versionRecord struct {
	Version   int       `json:"version"`
	ID        []byte    `json:"id,omitempty"`
	Created   time.Time `json:"created,omitzero"`
	Retired   time.Time `json:"retired,omitzero"`
	Destroyed bool      `json:"destroyed,omitempty"`
}

// storedRecord is a record as found in the token.
type storedRecord struct {
	h       p11.ObjectHandle
	pending bool
	versionRecord
}

// readRecords returns the named key's records, committed and pending.
// Records it cannot parse are not the agent's and are left alone.
func (p *Provider) readRecords(s *session, name string) (recs []storedRecord, err error) {
	// An object destroyed by another agent between the search and the
	// read cannot be read (SoftHSM2 says CKR_ATTRIBUTE_VALUE_INVALID):
	// search again rather than guess whether it was a claim.
	for range 5 {
		recs, err = p.readRecordsOnce(s, name)
		if rv(err) != p11.CKR_ATTRIBUTE_VALUE_INVALID {
			break
		}
	}
	return recs, err
}

func (p *Provider) readRecordsOnce(s *session, name string) ([]storedRecord, error) {
	hs, err := p.findObjects(s, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_APPLICATION, versionApplication(name)),
	}, 10000)
	if err != nil {
		return nil, err
	}
	var out []storedRecord
	for _, h := range hs {
		attrs, err := p.ctx.GetAttributeValue(s.h, h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_LABEL, nil),
			p11.NewAttribute(p11.CKA_VALUE, nil),
		})
		if err != nil {
			if handleStale(err) {
				continue // removed meanwhile
			}
			return nil, err
		}
		r := storedRecord{h: h}
		if json.Unmarshal(attrs[1].Value, &r.versionRecord) != nil || r.Version < 1 || r.Version > maxKeyVersion {
			continue
		}
		switch label := string(attrs[0].Value); {
		case label == recordLabel(name, r.Version):
		case strings.HasPrefix(label, recordLabel(name, r.Version)+"~"):
			r.pending = true
		default:
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// versionEntry is one version as read from the token.
type versionEntry struct {
	providers.VersionInfo
	label   string
	id      []byte             // nil for version 1: found by label alone
	records []p11.ObjectHandle // its committed records
	record  versionRecord      // merged
	present bool               // its key object exists
}

// readVersions returns the named key's committed versions, oldest first.
// ErrKeyNotFound if it has none.
func (p *Provider) readVersions(s *session, name string) ([]*versionEntry, error) {
	recs, err := p.readRecords(s, name)
	if err != nil {
		return nil, err
	}
	legacy, err := p.findObjects(s, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_LABEL, name),
	}, 1)
	if err != nil {
		return nil, err
	}
	byNumber := map[int]*versionEntry{}
	newest := 0
	if len(legacy) > 0 {
		byNumber[1] = &versionEntry{label: name, present: true}
		newest = 1
	}
	for _, r := range recs {
		if r.pending {
			continue
		}
		e := byNumber[r.Version]
		if e == nil {
			e = &versionEntry{label: versionLabel(name, r.Version)}
			byNumber[r.Version] = e
		}
		// Two agents that recorded the same version (retiring version
		// 1 at once) wrote states that only move forward: merge them.
		e.records = append(e.records, r.h)
		if r.Version > 1 && e.id == nil {
			e.id = r.ID
		}
		e.record.Created = earliest(e.record.Created, r.Created)
		e.record.Retired = earliest(e.record.Retired, r.Retired)
		e.record.Destroyed = e.record.Destroyed || r.Destroyed
		newest = max(newest, r.Version)
	}
	if newest == 0 {
		if !p.loggedIn(s) {
			return nil, p11.Error(p11.CKR_USER_NOT_LOGGED_IN)
		}
		return nil, fmt.Errorf("pkcs11: key %q: %w", name, providers.ErrKeyNotFound)
	}
	if byNumber[1] == nil {
		// Every key had a version 1; its object is gone.
		byNumber[1] = &versionEntry{label: name}
	}
	// Numbers a failed rotation claimed are missing: walk those there are.
	var out []*versionEntry
	current := 0
	for _, n := range slices.Sorted(maps.Keys(byNumber)) {
		e := byNumber[n]
		e.Version, e.record.Version = n, n
		if n > 1 {
			hs, err := p.findObjects(s, versionTemplate(e.label, e.id), 1)
			if err != nil {
				return nil, err
			}
			e.present = len(hs) > 0
			if !e.present && !e.record.Destroyed {
				// A record the agent did not write (every version
				// the agent made has its object, or is recorded
				// destroyed before the object goes): no version.
				continue
			}
		}
		if e.present && !e.record.Destroyed {
			current = n
		}
		out = append(out, e)
	}
	for i, e := range out {
		e.Created, e.Retired = e.record.Created, e.record.Retired
		switch {
		case e.record.Destroyed || !e.present:
			e.State = providers.VersionDestroyed
		case !e.record.Retired.IsZero():
			e.State = providers.VersionRetired
		case e.Version == current:
			e.State = providers.VersionCurrent
		default:
			e.State = providers.VersionPrevious
		}
		if i > 0 {
			out[i-1].Superseded = e.Created
		}
	}
	return out, nil
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// versionTemplate finds version objects: by label, and by CKA_ID too
// when there is one.
func versionTemplate(label string, id []byte) []*p11.Attribute {
	t := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}
	if id != nil {
		t = append(t, p11.NewAttribute(p11.CKA_ID, id))
	}
	return t
}

// versions reads the named key's versions on a pooled session.
func (p *Provider) versions(ctx context.Context, name string) ([]*versionEntry, error) {
	if err := providers.CheckKeyName(name); err != nil {
		return nil, fmt.Errorf("pkcs11: %w", err)
	}
	var es []*versionEntry
	err := p.withSession(ctx, func(s *session) (err error) {
		es, err = p.readVersions(s, name)
		return err
	})
	if err != nil && rv(err) != 0 {
		return nil, classify("versions of "+name, err)
	}
	return es, err
}

// Versions returns the named key's versions, oldest first, as the token
// holds them now. A key this provider looked up before under its name is
// looked up again if another agent rotated it.
func (p *Provider) Versions(ctx context.Context, name string) ([]providers.VersionInfo, error) {
	if isURI(name) {
		if _, err := p.Key(ctx, name); err != nil {
			return nil, err
		}
		return []providers.VersionInfo{{Version: 1, State: providers.VersionCurrent}}, nil
	}
	es, err := p.versions(ctx, name)
	if err != nil {
		return nil, err
	}
	out := make([]providers.VersionInfo, len(es))
	for i, e := range es {
		out[i] = e.VersionInfo
	}
	current := currentVersion(es)
	p.invalidate(nil, func(k *key) bool {
		return k.name == name && (current == nil || k.version != current.Version)
	})
	return out, nil
}

// currentKey looks up the named key's current version.
func (p *Provider) currentKey(ctx context.Context, name string) (providers.Key, error) {
	es, err := p.versions(ctx, name)
	if err != nil {
		return nil, err
	}
	e := currentVersion(es)
	if e == nil {
		return nil, fmt.Errorf("pkcs11: key %q: %w: it has no current version", name, providers.ErrKeyNotFound)
	}
	return p.loadKey(ctx, &key{p: p, name: name, label: e.label, id: e.id, version: e.Version})
}

// KeyVersion returns version n of the named key unless it was destroyed.
func (p *Provider) KeyVersion(ctx context.Context, name string, n int) (providers.Key, error) {
	if isURI(name) {
		if n != 1 {
			return nil, fmt.Errorf("pkcs11: key %q: %w: no version %d", name, providers.ErrKeyNotFound, n)
		}
		return p.Key(ctx, name)
	}
	es, err := p.versions(ctx, name)
	if err != nil {
		return nil, err
	}
	e := findVersion(es, n)
	if e == nil || e.State == providers.VersionDestroyed {
		return nil, fmt.Errorf("pkcs11: key %q: %w: no version %d", name, providers.ErrKeyNotFound, n)
	}
	ref := recordLabel(name, n)
	if k := p.cache.lookup(ref); k != nil {
		return k, nil
	}
	return p.loadKey(ctx, &key{p: p, name: ref, label: e.label, id: e.id, version: n})
}

// currentVersion is the current one of es, or nil if its object was
// deleted by someone else.
func currentVersion(es []*versionEntry) *versionEntry {
	for _, e := range es {
		if e.State == providers.VersionCurrent {
			return e
		}
	}
	return nil
}

func findVersion(es []*versionEntry, n int) *versionEntry {
	for _, e := range es {
		if e.Version == n {
			return e
		}
	}
	return nil
}

// hasRecords reports whether the named key has version records: a key
// whose version 1 was destroyed still holds its name.
func (p *Provider) hasRecords(s *session, name string) (bool, error) {
	hs, err := p.findObjects(s, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_APPLICATION, versionApplication(name)),
	}, 1)
	return len(hs) > 0, err
}

// recordFirstVersion dates a new key's version 1 with a record, so that
// rotate_every counts from when the key was made: a version without a
// date (as every key made before versions has) is taken as due. The key
// is made already; if the record cannot be written it stays undated, as
// such a key is.
func (p *Provider) recordFirstVersion(s *session, name string) {
	value, err := json.Marshal(versionRecord{Version: 1, Created: time.Now().UTC()})
	if err != nil {
		return
	}
	p.createObject(s, recordTemplate(name, recordLabel(name, 1), value))
}

// deleteVersions destroys the named key's versions from 2 on and every
// record, for DeleteKey. It reports whether there was anything, and the
// key objects it destroyed, also when it fails part way: a key cached by
// a reference to one of them (a URI) must be dropped with the name.
func (p *Provider) deleteVersions(s *session, name string) (versioned bool, destroyed []p11.ObjectHandle, err error) {
	recs, err := p.readRecords(s, name)
	if err != nil {
		return false, nil, err
	}
	for _, r := range recs {
		if r.Version > 1 {
			hs, err := p.destroyAll(s, versionTemplate(versionLabel(name, r.Version), r.ID))
			destroyed = append(destroyed, hs...)
			if err != nil {
				return true, destroyed, err
			}
		}
		if err := p.ctx.DestroyObject(s.h, r.h); err != nil && !handleStale(err) {
			return true, destroyed, err
		}
	}
	return len(recs) > 0, destroyed, nil
}

// isURI reports whether ref names an object by an RFC 7512 URI rather than
// by its label. Versions are kept under labels, so such an object is a key
// of one version: itself, version 1.
func isURI(ref string) bool { return strings.HasPrefix(ref, "pkcs11:") }
