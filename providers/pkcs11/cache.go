//go:build cgo

package pkcs11

import (
	"slices"
	"sync"
	"sync/atomic"

	p11 "github.com/miekg/pkcs11"
)

// objectCache is everything the provider remembers about the token's
// objects between calls, so that an operation costs the token one init
// call and not a search first:
//
//   - keys: each key looked up, by reference (a name, NAME@N, or a URI),
//     with what its attributes allow (key.algs, key.identity);
//   - each key's token-object handle, valid under the login it was found
//     in (key.gen against Provider.gen) and found again by label and ID
//     after that;
//   - each key's session copy (copies.go), when copies are on.
//
// Entries are dropped in two ways only. invalidate drops the keys a
// change to one object concerns (deleted, rotated away, retired,
// destroyed, found gone): they leave the map and are evicted, so that a
// holder that still uses one (a context, the agent's own lookups) reaches
// the token object itself and never makes a copy nothing could find
// again. invalidateAll drops every handle and copy and keeps the entries,
// whose attributes still describe objects found again by label and ID: a
// stale handle, a new login, the module about to be re-initialized.
//
// Lock order: objectCache.mu, then a key's mu, then copies.mu;
// invalidate takes no key's mu under objectCache.mu.
type objectCache struct {
	mu   sync.Mutex
	keys map[string]*key

	copies copyStore
}

// copyStore is the session that holds keys' session copies, outside the
// pool: a session object dies with the session that made it, and pool
// sessions are closed when they break.
type copyStore struct {
	// on: keys are copied (Config.KeyCopies, and whether the token
	// can); cleared for good when the token says it cannot copy.
	on atomic.Bool
	// held counts live copies, for metrics and tests; attempts counts
	// C_CopyObject calls, for tests.
	held, attempts atomic.Int64

	mu   sync.Mutex
	sess p11.SessionHandle
	open bool
	// epoch counts copies' sessions: a copy made in an earlier one went
	// with it, and its handle may now name another copy.
	epoch atomic.Uint64
}

// lookup returns the cached key named ref, or nil.
func (c *objectCache) lookup(ref string) *key {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keys[ref]
}

// add caches k under its name, unless another lookup cached one first,
// and returns the key cached.
func (c *objectCache) add(k *key) *key {
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev := c.keys[k.name]; prev != nil {
		return prev
	}
	c.keys[k.name] = k
	return k
}

// invalidate evicts the keys match selects and every key whose handle is
// one of the token objects destroyed under the current login, after those
// objects were deleted or a name came to mean another object. Their copies
// are destroyed now, or by the last call still using them. With objects
// destroyed, the keys match selects are those objects' (a deleted key and
// its versions, a destroyed version): every key evicted then is marked
// destroyed and never finds an object again. It needs no
// enter(): copies.mu orders a copy's destruction before the copies'
// session is closed or abandoned, which comes before any finalize.
//
// c.mu is held only to pick keys out of the map, never while waiting for
// a key's mu: objectHandle holds that across token round trips, and one
// slow call on one key must not stall lookups of every other. match reads
// only a key's name and version, which never change once it is made; a
// key matched by handle leaves the map after its mu shows the handle.
func (p *Provider) invalidate(destroyed []p11.ObjectHandle, match func(*key) bool) {
	c := &p.cache
	var matched, others []*key
	c.mu.Lock()
	for name, k := range c.keys {
		switch {
		case match(k):
			delete(c.keys, name)
			matched = append(matched, k)
		case len(destroyed) > 0:
			others = append(others, k)
		}
	}
	c.mu.Unlock()
	for _, k := range matched {
		k.mu.Lock()
		k.evicted = true
		k.destroyed = k.destroyed || len(destroyed) > 0
		k.forgetLocked()
		k.mu.Unlock()
	}
	gen := p.gen.Load()
	var byHandle []*key
	for _, k := range others {
		k.mu.Lock()
		if k.gen == gen && slices.Contains(destroyed, k.handle) {
			k.evicted, k.destroyed = true, true
			k.forgetLocked()
			byHandle = append(byHandle, k)
		}
		k.mu.Unlock()
	}
	if len(byHandle) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range byHandle {
		if c.keys[k.name] == k {
			delete(c.keys, k.name)
		}
	}
}

// evict is invalidate for the one key k. Every key that can hold a copy
// is cached or evicted already: a lookup that lost the race to cache its
// key drops it unused.
func (k *key) evict() { k.p.invalidate(nil, func(x *key) bool { return x == k }) }

// invalidateAll drops every key's handle and copy. With sessionsGone (the
// module is about to be finalized, which ends every session) nothing here
// calls the module.
func (p *Provider) invalidateAll(sessionsGone bool) {
	c := &p.cache
	if sessionsGone {
		c.copies.mu.Lock()
		c.copies.abandonLocked()
		c.copies.mu.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.keys {
		k.mu.Lock()
		k.forgetLocked()
		k.mu.Unlock()
	}
}

// abandonLocked forgets the copies' session and every copy in it. It does
// not close it: the caller has, or the module will. copies.mu is held.
func (s *copyStore) abandonLocked() {
	if s.open {
		s.open = false
		s.epoch.Add(1)
		s.held.Store(0)
	}
}

// closeLocked closes the copies' session, which destroys every copy in
// it. copies.mu is held.
func (s *copyStore) closeLocked(ctx *p11.Ctx) {
	if s.open {
		ctx.CloseSession(s.sess)
		s.abandonLocked()
	}
}
