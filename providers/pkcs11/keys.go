//go:build cgo

package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/hmac-agent/hmac-agent/providers"
)

// key is a secret key in the token, found by label and/or ID.
type key struct {
	p *Provider
	// name is what the key is cached under: a name, NAME@N for a version
	// asked for by number, or a URI.
	name  string
	label string
	id    []byte
	// version is the key version the object is, 0 for a key named by URI.
	version int
	algs    map[providers.Algorithm]bool
	// identity is the object's own CKA_LABEL and CKA_ID, as read from
	// the token: the same whether the key was found by label or by id.
	identity string

	mu     sync.Mutex
	handle p11.ObjectHandle
	gen    uint64 // the login the handle was found under; 0: not found
	// evicted: the provider's cache dropped the key (objectCache); it is
	// used through the token object alone. uncopied: no copy could be
	// made of the object, which is not asked again until it is found
	// again.
	evicted, uncopied bool
	// destroyed: this provider destroyed the object. A token tells
	// objects apart only by label and ID, which a key made again under
	// the same name shares, so the key is never looked up again: a
	// context opened on the old key must not go on with the new one.
	destroyed bool
	// copy is the key's session copy (copies.go), if copy.h is not 0;
	// checked is when the original was last seen unchanged.
	copy    keyCopy
	checked time.Time
}

var (
	_ providers.Key        = (*key)(nil)
	_ providers.Identified = (*key)(nil)
)

// Identity is the object's CKA_LABEL and CKA_ID. Two objects alike in
// both cannot be told apart by any reference to them.
func (k *key) Identity() string { return k.identity }

// template is the search template for the key: a token object, never one
// of the agent's session copies.
func (k *key) template() []*p11.Attribute {
	t := []*p11.Attribute{p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY), p11.NewAttribute(p11.CKA_TOKEN, true)}
	if k.label != "" {
		t = append(t, p11.NewAttribute(p11.CKA_LABEL, k.label))
	}
	if len(k.id) > 0 {
		t = append(t, p11.NewAttribute(p11.CKA_ID, k.id))
	}
	return t
}

// objectHandle returns the handle operations use: the key's session copy,
// made on first use, or else the token object. done must be called once
// the handle is no longer used: a copy dropped meanwhile (the original
// changed, a new login, another goroutine's check finding the token gone)
// is destroyed only then. SoftHSM2 checks that an object is valid and then
// reads its CKA_SIGN and key type, so a copy destroyed by another goroutine
// in between made C_SignInit refuse the key, which clients saw as
// ErrUnsupportedAlgorithm.
func (k *key) objectHandle(s *session) (h p11.ObjectHandle, done func(), err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if c, err := k.usableCopy(s); c != 0 || err != nil {
		if err != nil {
			return 0, nil, err
		}
		return c, k.holdCopyLocked(), nil
	}
	h, err = k.tokenHandleLocked(s)
	if err != nil || k.evicted || k.uncopied {
		return h, func() {}, err
	}
	asked := time.Now() // copyKey reads the rights the copy is checked against
	if k.copy = k.p.copyKey(s, h); k.copy.h != 0 {
		k.checked = asked
		return k.copy.h, k.holdCopyLocked(), nil
	}
	k.uncopied = true
	return h, func() {}, nil
}

// tokenHandle returns the token object's handle: for looking at or
// deleting the key itself.
func (k *key) tokenHandle(s *session) (p11.ObjectHandle, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.tokenHandleLocked(s)
}

// tokenHandleLocked finds the token object again when the login changed
// since it was found. k.mu is held.
func (k *key) tokenHandleLocked(s *session) (p11.ObjectHandle, error) {
	if k.destroyed {
		return 0, fmt.Errorf("pkcs11: key %q: %w: it was deleted", k.name, providers.ErrKeyNotFound)
	}
	gen := k.p.gen.Load()
	if k.gen == gen {
		return k.handle, nil
	}
	hs, err := k.p.findObjects(s, k.template(), 2)
	if err != nil {
		return 0, err
	}
	switch len(hs) {
	case 0:
		// Private objects are invisible without a login: a key that
		// vanished may only mean the login was lost underneath.
		if !k.p.loggedIn(s) {
			return 0, p11.Error(p11.CKR_USER_NOT_LOGGED_IN)
		}
		return 0, fmt.Errorf("pkcs11: key %q: %w", k.name, providers.ErrKeyNotFound)
	case 1:
	default:
		return 0, fmt.Errorf("pkcs11: key %q: %w: more than one object matches; name it by id", k.name, providers.ErrInvalidArgument)
	}
	k.handle, k.gen = hs[0], gen
	return k.handle, nil
}

// forgetLocked drops the handle and destroys the copy, so that the next
// use looks the key up again. k.mu is held.
func (k *key) forgetLocked() {
	k.gen, k.uncopied = 0, false
	k.dropCopy()
}

func (k *key) Name() string { return k.name }

// Supports reports whether the token has the mechanism and the key's type
// and length allow it.
func (k *key) Supports(alg providers.Algorithm) bool { return k.algs[alg] }

// keyAlgorithms says which algorithms a key of this type and length can
// do on this token: a typed HMAC key only its own hash, and no key shorter
// than the digest (tokens refuse them at C_SignInit).
func (p *Provider) keyAlgorithms(keyType uint, valueLen int) map[providers.Algorithm]bool {
	typed := map[uint]providers.Algorithm{
		p11.CKK_SHA_1_HMAC: providers.SHA1, p11.CKK_SHA224_HMAC: providers.SHA224,
		p11.CKK_SHA256_HMAC: providers.SHA256, p11.CKK_SHA384_HMAC: providers.SHA384,
		p11.CKK_SHA512_HMAC: providers.SHA512, p11.CKK_SHA3_224_HMAC: providers.SHA3_224,
		p11.CKK_SHA3_256_HMAC: providers.SHA3_256, p11.CKK_SHA3_384_HMAC: providers.SHA3_384,
		p11.CKK_SHA3_512_HMAC: providers.SHA3_512, p11.CKK_MD5_HMAC: providers.MD5,
	}
	out := map[providers.Algorithm]bool{}
	for _, alg := range p.algs {
		only, isTyped := typed[keyType]
		if isTyped && only != alg || !isTyped && keyType != p11.CKK_GENERIC_SECRET {
			continue
		}
		if valueLen > 0 && valueLen < alg.Size() {
			continue
		}
		out[alg] = true
	}
	return out
}

// reference turns what the agent passes (a plain name or a pkcs11: URI)
// into a label and ID.
func (p *Provider) reference(ref string) (label string, id []byte, err error) {
	if !strings.HasPrefix(ref, "pkcs11:") {
		return ref, nil, nil
	}
	u, err := ParseURI(ref)
	if err != nil {
		return "", nil, fmt.Errorf("pkcs11: %w: %v", providers.ErrInvalidArgument, err)
	}
	if u.Token != "" && p.cfg.TokenLabel != "" && u.Token != p.cfg.TokenLabel {
		return "", nil, fmt.Errorf("pkcs11: %w: %s names token %q, but provider %q uses token %q", providers.ErrInvalidArgument, ref, u.Token, p.cfg.Name, p.cfg.TokenLabel)
	}
	if u.Serial != "" && p.cfg.TokenSerial != "" && u.Serial != p.cfg.TokenSerial {
		return "", nil, fmt.Errorf("pkcs11: %w: %s names token serial %s, not %s", providers.ErrInvalidArgument, ref, u.Serial, p.cfg.TokenSerial)
	}
	return u.Object, u.ID, nil
}

// Key finds a key by name (its label) or by RFC 7512 URI. Errors wrap
// ErrKeyNotFound, ErrInvalidArgument or ErrUnavailable.
func (p *Provider) Key(ctx context.Context, ref string) (providers.Key, error) {
	if err := p.enter(); err != nil { // closed, or the token is down
		return nil, err
	}
	p.leave()
	if k := p.cache.lookup(ref); k != nil {
		return k, nil
	}
	if !strings.HasPrefix(ref, "pkcs11:") {
		if name, n, ok := splitVersion(ref); ok {
			return p.KeyVersion(ctx, name, n)
		}
		return p.currentKey(ctx, ref)
	}
	label, id, err := p.reference(ref)
	if err != nil {
		return nil, err
	}
	return p.loadKey(ctx, &key{p: p, name: ref, label: label, id: id})
}

// loadKey reads k's object from the token and caches k under its name,
// unless another lookup cached one first.
func (p *Provider) loadKey(ctx context.Context, k *key) (providers.Key, error) {
	ref := k.name
	err := p.withSession(ctx, func(s *session) error {
		h, err := k.tokenHandle(s)
		if err != nil {
			return err
		}
		attrs, err := p.ctx.GetAttributeValue(s.h, h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
			p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
			p11.NewAttribute(p11.CKA_SIGN, nil),
			p11.NewAttribute(p11.CKA_LABEL, nil),
			p11.NewAttribute(p11.CKA_ID, nil),
		})
		if err != nil {
			return err
		}
		var keyType uint
		var valueLen int
		var label, id []byte
		signs := true
		if keyAttributesRead != nil {
			keyAttributesRead(attrs)
		}
		defer func() { k.identity = fmt.Sprintf("label=%x;id=%x", label, id) }()
		for _, a := range attrs {
			switch a.Type {
			case p11.CKA_LABEL:
				label = a.Value
			case p11.CKA_ID:
				id = a.Value
			case p11.CKA_KEY_TYPE:
				keyType = uint(bytesToUint(a.Value))
			case p11.CKA_VALUE_LEN:
				valueLen = int(bytesToUint(a.Value))
			case p11.CKA_SIGN:
				signs = !(len(a.Value) > 0 && a.Value[0] == 0)
			}
		}
		k.algs = p.keyAlgorithms(keyType, valueLen)
		if len(k.algs) == 0 || !signs {
			// An object emptied underneath reads as key type 0 with
			// CKA_SIGN false (SoftHSM2's value for an attribute it no
			// longer holds). A read during an outage must not cache a
			// key that cannot sign, which the agent would keep
			// answering ErrUnsupportedAlgorithm for: ask the token
			// first.
			if err := p.tokenPresent(); err != nil {
				p.setDown(fmt.Errorf("%v (after reading key %q as unable to sign)", err, ref))
				return p.unavailable()
			}
		}
		if !signs {
			return fmt.Errorf("pkcs11: key %q: %w: CKA_SIGN is false", ref, providers.ErrUnsupportedAlgorithm)
		}
		return nil
	})
	if err != nil {
		if rv(err) != 0 {
			return nil, classify("find key "+ref, err)
		}
		return nil, err
	}
	return p.cache.add(k), nil
}

// keyAttributesRead, when set by a test, sees (and may change) a key's
// attributes as loadKey read them, before they are believed.
var keyAttributesRead func([]*p11.Attribute)

// bytesToUint reads a CK_ULONG attribute in the host's byte order.
func bytesToUint(b []byte) uint64 {
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// Keys lists the token's secret keys that can sign, by label. Keys with no
// label are left out; name them by URI with id=.
func (p *Provider) Keys(ctx context.Context) ([]providers.KeyInfo, error) {
	var infos []providers.KeyInfo
	err := p.withSession(ctx, func(s *session) error {
		infos = infos[:0]
		newest, byName := map[string]int{}, map[string]providers.KeyInfo{}
		hs, err := p.findObjects(s, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_SIGN, true),
		}, 10000)
		if err != nil {
			return err
		}
		for _, h := range hs {
			attrs, err := p.ctx.GetAttributeValue(s.h, h, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_LABEL, nil),
				p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
				p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
			})
			if err != nil {
				continue // deleted meanwhile, or unreadable: not ours to list
			}
			label := string(attrs[0].Value)
			algs := p.keyAlgorithms(uint(bytesToUint(attrs[1].Value)), int(bytesToUint(attrs[2].Value)))
			if label == "" || len(algs) == 0 {
				continue
			}
			// A key is listed once, with what its newest version
			// can do; version 1 is the object labelled by name.
			name, n, versioned := splitVersion(label)
			if !versioned {
				name, n = label, 1
			}
			if seen, ok := newest[name]; ok && seen >= n {
				continue
			}
			newest[name] = n
			info := providers.KeyInfo{Name: name, Provider: p.cfg.Name, Kind: p.Kind()}
			for _, alg := range p.algs {
				if algs[alg] {
					info.Algorithms = append(info.Algorithms, alg)
				}
			}
			byName[name] = info
		}
		for _, info := range byName {
			infos = append(infos, info)
		}
		// A token that went away lists nothing: that is not an empty
		// token.
		return p.tokenPresent()
	})
	if err != nil {
		return nil, classify("list keys", err)
	}
	slices.SortFunc(infos, func(a, b providers.KeyInfo) int { return strings.Compare(a.Name, b.Name) })
	return infos, nil
}

// keyTemplate is every new key's template: a token object that only signs
// and verifies and can never be read or wrapped out.
func keyTemplate(name string) []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_SIGN, true),
		p11.NewAttribute(p11.CKA_VERIFY, true),
		p11.NewAttribute(p11.CKA_ENCRYPT, false),
		p11.NewAttribute(p11.CKA_DECRYPT, false),
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
		p11.NewAttribute(p11.CKA_LABEL, name),
		p11.NewAttribute(p11.CKA_ID, []byte(name)),
	}
}

// create runs make on a session after checking the name is free, and
// returns the new key's info.
func (p *Provider) create(ctx context.Context, name string, make func(s *session) error) (providers.KeyInfo, error) {
	if err := providers.CheckKeyName(name); err != nil {
		return providers.KeyInfo{}, fmt.Errorf("pkcs11: %w", err)
	}
	err := p.withSession(ctx, func(s *session) error {
		p.mod.objects.Lock()
		defer p.mod.objects.Unlock()
		hs, err := p.findObjects(s, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_LABEL, name),
		}, 1)
		if err != nil {
			return err
		}
		if len(hs) > 0 {
			return fmt.Errorf("pkcs11: %q: %w", name, providers.ErrKeyExists)
		}
		if versioned, err := p.hasRecords(s, name); err != nil || versioned {
			if err == nil {
				err = fmt.Errorf("pkcs11: %q: %w: it has versions", name, providers.ErrKeyExists)
			}
			return err
		}
		if err := make(s); err != nil {
			return err
		}
		p.recordFirstVersion(s, name)
		return nil
	})
	if err != nil {
		if rv(err) != 0 {
			return providers.KeyInfo{}, classify("create key "+name, err)
		}
		return providers.KeyInfo{}, err
	}
	p.invalidate(nil, named(name))
	k, err := p.Key(ctx, name)
	if err != nil {
		return providers.KeyInfo{}, err
	}
	info := providers.KeyInfo{Name: name, Provider: p.cfg.Name, Kind: p.Kind()}
	for _, alg := range p.algs {
		if k.Supports(alg) {
			info.Algorithms = append(info.Algorithms, alg)
		}
	}
	return info, nil
}

// named selects the key cached under ref, for invalidate.
func named(ref string) func(*key) bool { return func(k *key) bool { return k.name == ref } }

// gone evicts k if err says the token no longer has it (another program
// deleted it), so the next lookup asks the token and a listing does not
// show it. It returns err.
func (k *key) gone(err error) error {
	if errors.Is(err, providers.ErrKeyNotFound) {
		k.evict()
	}
	return err
}

// GenerateKey creates a key inside the token with CKM_GENERIC_SECRET_KEY_GEN
// (length 0: DefaultKeyLength, long enough for every mechanism).
func (p *Provider) GenerateKey(ctx context.Context, name string, length int) (providers.KeyInfo, error) {
	if length == 0 {
		length = DefaultKeyLength
	}
	if length < 1 || length > maxKeyLength {
		return providers.KeyInfo{}, fmt.Errorf("pkcs11: key length %d: %w: must be 1 to %d bytes", length, providers.ErrInvalidArgument, maxKeyLength)
	}
	return p.create(ctx, name, func(s *session) error {
		tmpl := append(keyTemplate(name), p11.NewAttribute(p11.CKA_VALUE_LEN, length))
		_, err := p.generateKey(s, []*p11.Mechanism{p11.NewMechanism(p11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, tmpl)
		return err
	})
}

// padKey zero-pads a key shorter than paddedKeyLength. HMAC pads a key
// with zeros to the hash's block size before use, and every block size is
// at least 64 bytes, so the padded key gives the same tags with every
// algorithm, while tokens accept it for every digest size.
func padKey(secret []byte) []byte {
	out := make([]byte, max(len(secret), paddedKeyLength))
	copy(out, secret)
	return out
}

// ImportKey stores secret in the token with C_CreateObject, zero-padded to
// 64 bytes when shorter. The bytes cross into the token once and are not
// kept.
func (p *Provider) ImportKey(ctx context.Context, name string, secret []byte) (providers.KeyInfo, error) {
	if len(secret) > maxKeyLength {
		return providers.KeyInfo{}, fmt.Errorf("pkcs11: key of %d bytes: %w: at most %d", len(secret), providers.ErrInvalidArgument, maxKeyLength)
	}
	value := padKey(secret)
	defer clear(value)
	return p.create(ctx, name, func(s *session) error {
		_, err := p.createObject(s, append(keyTemplate(name), p11.NewAttribute(p11.CKA_VALUE, value)))
		return err
	})
}

// ImportWrappedKey unwraps a key wrapped with CKM_AES_KEY_WRAP_PAD (RFC
// 5649) under an AES key already in the token, named by label or URI, so
// the key's bytes never pass through the agent. A key shorter than the
// digest it will be used with must have been zero-padded before wrapping,
// as ImportKey does.
func (p *Provider) ImportWrappedKey(ctx context.Context, name, wrappingKey string, wrapped []byte) (providers.KeyInfo, error) {
	label, id, err := p.reference(wrappingKey)
	if err != nil {
		return providers.KeyInfo{}, err
	}
	wk := &key{p: p, name: wrappingKey, label: label, id: id}
	return p.create(ctx, name, func(s *session) error {
		h, err := wk.tokenHandle(s)
		if err != nil {
			return err
		}
		mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}
		_, err = p.unwrapKey(s, mech, h, wrapped, keyTemplate(name))
		return err
	})
}

// DeleteKey destroys the key the name or URI finds.
func (p *Provider) DeleteKey(ctx context.Context, ref string) error {
	label, id, err := p.reference(ref)
	if err != nil {
		return err
	}
	k := &key{p: p, name: ref, label: label, id: id}
	// Every object destroyed, across retries: a key cached under another
	// reference (pkcs11:object=NAME@2) may hold any of them.
	var deleted []p11.ObjectHandle
	err = p.withSession(ctx, func(s *session) error {
		p.mod.objects.Lock()
		defer p.mod.objects.Unlock()
		versioned := false
		if !strings.HasPrefix(ref, "pkcs11:") {
			// Every version goes with the key.
			var hs []p11.ObjectHandle
			versioned, hs, err = p.deleteVersions(s, ref)
			deleted = append(deleted, hs...)
			if err != nil {
				return err
			}
		}
		h, err := k.tokenHandle(s)
		if versioned && errors.Is(err, providers.ErrKeyNotFound) {
			return nil // version 1 was destroyed before
		}
		if err != nil {
			return err
		}
		deleted = append(deleted, h) // dropped even if the reply is lost
		return p.ctx.DestroyObject(s.h, h)
	})
	// Every version goes with the key, and another name may reach the
	// same object.
	p.invalidate(deleted, func(k *key) bool {
		base, _, versioned := splitVersion(k.name)
		return k.name == ref || versioned && base == ref && !isURI(ref)
	})
	if err != nil && rv(err) != 0 {
		return classify("delete key "+ref, err)
	}
	return err
}
