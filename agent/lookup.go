package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// lookup resolves the key a peer names for an operation in ops and checks
// the peer may do it. A peer that may use no key of that name, whether
// one exists or not, gets the same denial, decided before any provider
// is asked: otherwise permission_denied against key_not_found would tell
// it which names exist, and its guesses would cost token lookups. The
// agent's owner and root are told which of the two it is.
func (a *Agent) lookup(ctx context.Context, peer Peer, name []byte, ops Ops) (*resolved, error) {
	if m := a.cache.Load(); m != nil {
		if r := (*m)[string(name)]; r != nil {
			if r.policy.allows(peer, ops) {
				if err := r.usable(); err != nil {
					return nil, err
				}
				return r, nil
			}
			return nil, a.denied(peer, r.policy, r.name, ops)
		}
	}
	if !a.isAdmin(peer) {
		a.mu.RLock()
		pol := a.defaultPolicy
		if kc, ok := a.keys[baseName(name)]; ok {
			pol = kc.Policy
		}
		a.mu.RUnlock()
		if !pol.allows(peer, OpMAC|OpVerify) {
			return nil, a.denied(peer, &pol, string(name), ops)
		}
	}
	r, err := a.resolveSlow(ctx, string(name))
	if err != nil {
		return nil, err
	}
	if !r.policy.allows(peer, ops) {
		return nil, a.denied(peer, r.policy, r.name, ops)
	}
	if err := r.usable(); err != nil {
		return nil, err
	}
	return r, nil
}

// allowedNothing reports, without asking a provider, whether peer may
// use no key of name at all: the name's policy, configured or default,
// does not list it, and it is neither the agent's owner nor root.
func (a *Agent) allowedNothing(peer Peer, name []byte) bool {
	if a.isAdmin(peer) {
		return false
	}
	if m := a.cache.Load(); m != nil {
		if r := (*m)[string(name)]; r != nil {
			return !r.policy.allows(peer, OpMAC|OpVerify)
		}
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	pol := &a.defaultPolicy
	if kc, ok := a.keys[baseName(name)]; ok {
		pol = &kc.Policy
	}
	return !pol.allows(peer, OpMAC|OpVerify)
}

// Immediate is Agent.Immediate for the session's peer. A name the peer
// may use no key of reports true without a lookup: its requests are
// denied at once, so they may as well be denied inline.
func (s *Session) Immediate(name []byte) bool {
	return s.agent.allowedNothing(s.peer, name) || s.agent.Immediate(name)
}

// ContextImmediate reports whether context id is open on a key whose
// operations run on the CPU without waiting (providers.Immediate), so a
// server may run the context's requests as it runs a one-shot on such a
// key. Unlike Immediate it answers for the key the context was opened
// on, whatever the name means after a reload. It never calls a provider.
func (s *Session) ContextImmediate(id uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.contexts[id]
	return c != nil && c.key.immediate
}

// denied is the reply to a peer that pol does not allow ops. A peer
// allowed nothing at all gets one message for every name, so that the
// message, like the code, does not depend on whether the key exists.
func (a *Agent) denied(peer Peer, pol *Policy, name string, ops Ops) error {
	if !pol.allows(peer, OpMAC|OpVerify) {
		return providers.Publicf(providers.ErrPermissionDenied, "%s may not use key %q", peer, name)
	}
	return providers.Publicf(providers.ErrPermissionDenied, "%s may not %s with key %q", peer, ops, name)
}

func (a *Agent) isAdmin(peer Peer) bool {
	return peer.Known && (peer.UID == a.uid || peer.UID == 0)
}

// claimedBy returns the name of the [[key]] entry whose object is k,
// which p found under name for a caller under the default policy. Such an
// object is reachable only through its entry: otherwise a caller denied
// the entry could use the key by the object's own name. Entries are
// compared by reference first and then, for providers that reach one
// object by several references (a PKCS#11 label or CKA_ID), by the
// identity the provider gives the object. An entry whose object cannot
// be looked up for another reason than its absence is an error: the
// answer is unknown, and the agent does not guess in the caller's
// favour.
func (a *Agent) claimedBy(ctx context.Context, keys map[string]KeyConfig, p providers.Provider, name string, k providers.Key) (string, error) {
	id, hasID := k.(providers.Identified)
	for _, kc := range keys {
		if kc.Provider != p.Name() {
			continue
		}
		ref := baseName([]byte(kc.Ref)) // an entry naming one version claims the key
		if ref == name {
			return kc.Name, nil
		}
		if !hasID {
			continue
		}
		ck, err := a.findIn(ctx, p, ref)
		if errors.Is(err, providers.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return "", err
		}
		if other, ok := ck.(providers.Identified); ok && other.Identity() == id.Identity() {
			return kc.Name, nil
		}
	}
	return "", nil
}

// Unknown names are remembered for unknownTTL, at most maxUnknown of
// them, so that a caller guessing names does not turn each guess into a
// token lookup. The bound keeps a flood of random names from growing
// memory: when it is reached the older half is dropped, and a name
// dropped early costs one more lookup.
const (
	unknownTTL = 2 * time.Second
	maxUnknown = 8192
)

// unknownNames is a bounded, short-lived set of names no provider had.
// It is two generations of a map: new names go into cur, and when cur is
// full it becomes prev and cur starts empty. It is safe for concurrent
// use.
type unknownNames struct {
	mu        sync.Mutex
	cur, prev map[string]time.Time // name → when it was found missing
}

// has reports whether name was found missing less than unknownTTL ago.
func (u *unknownNames) has(name string, now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.cur[name]
	if !ok {
		t, ok = u.prev[name]
	}
	return ok && now.Sub(t) < unknownTTL
}

func (u *unknownNames) add(name string, now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.cur) >= maxUnknown/2 {
		u.prev, u.cur = u.cur, nil
	}
	if u.cur == nil {
		u.cur = make(map[string]time.Time)
	}
	u.cur[name] = now
}

// remove forgets name and its versions (NAME@N), after a key of that
// name was made or changed.
func (u *unknownNames) remove(name string) {
	u.mu.Lock()
	for _, m := range []map[string]time.Time{u.cur, u.prev} {
		delete(m, name)
		for k := range m {
			if strings.HasPrefix(k, name+"@") {
				delete(m, k)
			}
		}
	}
	u.mu.Unlock()
}

// reset forgets every name, after a reload.
func (u *unknownNames) reset() {
	u.mu.Lock()
	u.cur, u.prev = nil, nil
	u.mu.Unlock()
}

// size is how many names are remembered, for tests of the bound.
func (u *unknownNames) size() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.cur) + len(u.prev)
}

// refClaimed reports whether a configured key now names r's object under
// another name, so that r's name may no longer reach it. It reads only
// the configuration: an alias the configuration does not spell the same
// way is caught when the name is next looked up, not for open contexts.
func (a *Agent) refClaimed(r *resolved) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, kc := range a.keys {
		if kc.Name != r.name && baseName([]byte(kc.Ref)) == r.ref && a.byName[kc.Provider] == r.provider {
			return true
		}
	}
	return false
}
