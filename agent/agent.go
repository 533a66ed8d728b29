package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// KeyConfig is a key named in the configuration: where it lives and who
// may use it. Keys a provider holds that the configuration does not name
// are reachable by their own names, under the default policy; an object
// a KeyConfig names is reachable only through it.
type KeyConfig struct {
	Name     string // the name clients use
	Provider string // the provider's name
	Ref      string // the key's name in the provider; empty means Name
	Policy   Policy
	// VerifyGrace is how long a version keeps verifying after it stops
	// being current; zero means until it is retired. The agent retires
	// versions past it.
	VerifyGrace time.Duration
	// RotateEvery, if set, has the agent rotate the key when its current
	// version is that old.
	RotateEvery time.Duration
}

// Options configure an Agent.
type Options struct {
	// Providers in lookup order. The first is the default for key
	// management when no provider is named.
	Providers []providers.Provider
	Keys      []KeyConfig
	// DefaultPolicy applies to keys without a KeyConfig. Nil means
	// OwnerPolicy of the agent's uid.
	DefaultPolicy *Policy
	Limits        Limits
	Logger        *slog.Logger
	// Audit receives one line per key use and per denial; nil turns the
	// audit log off.
	Audit *slog.Logger
	// Observe, if set, is called for every key use and denial, as the
	// audit log is (metrics use it).
	Observe func(Use)
	Version string
	// HealthInterval is how often each provider's health is probed in
	// the background; zero means DefaultHealthInterval.
	HealthInterval time.Duration
	// VersionRefresh is how often each key's versions are read again
	// from its provider; zero means DefaultVersionRefresh, and a negative
	// value turns the background refresh off (tests call
	// RefreshVersions themselves).
	VersionRefresh time.Duration
	// Now is the clock that grace periods and rotation schedules are
	// measured by; nil means time.Now.
	Now func() time.Time
}

// Agent routes key names to providers and holds the limits shared by all
// sessions.
//
// Every call into a provider that may wait (a key lookup, key management,
// an operation on a key that is not providers.Immediate) waits at most the
// provider's timeout (providers.Deadliner, else DefaultTimeout), then
// fails with ErrUnavailable naming the provider. Status never calls a
// provider: each one's health is probed in the background.
type Agent struct {
	providers     []providers.Provider
	byName        map[string]providers.Provider
	devices       map[providers.Provider]*device
	keys          map[string]KeyConfig
	defaultPolicy Policy
	limits        Limits
	log           *slog.Logger
	version       string
	uid           uint32
	started       time.Time

	mu sync.RWMutex // guards keys and defaultPolicy, and serializes cache writers
	// cache maps key names to resolved keys, filled on first use. It is
	// copied on write and read with one atomic load: a read lock taken on
	// every request would bounce its cache line between CPUs.
	cache atomic.Pointer[map[string]*resolved]
	// gen counts configurations; a resolved key of an older one is
	// checked again before use, so a reload reaches open contexts.
	gen atomic.Uint64
	// unknown holds names recently found in no provider; made counts
	// keys made or deleted through the agent, so that a lookup that
	// raced with one does not remember its name as unknown.
	unknown unknownNames
	made    atomic.Uint64

	audit   *slog.Logger
	observe func(Use)
	needs   identityNeeds

	// auditLimit and logLimit hold each caller to a rate of denial and
	// error lines in the audit and agent logs; leftOut counts the rest.
	auditLimit, logLimit *logLimiter
	leftOut              atomic.Uint64

	contexts atomic.Int64
	sessions atomic.Int64
	callers  callers
	closed   atomic.Bool

	sessionsMu sync.Mutex
	live       map[*Session]struct{}
	// now is a coarse clock (seconds since start) for idle contexts:
	// reading the time on every update would cost more than the update.
	now  atomic.Int64
	stop chan struct{}
	// background counts the goroutines the agent runs of its own accord
	// (the clock, the health probers, the version refresh), which Close
	// stops and waits for: none may reach a provider after Close.
	background sync.WaitGroup

	clockFn    func() time.Time
	versionsMu sync.Mutex
	versions   map[versionsID]*keyVersions
}

// resolved is a key found in its provider, with its policy.
type resolved struct {
	gen       uint64 // the configuration it was resolved under
	ref       string // its name in the provider
	cref      string // the reference it was found by: ref, or ref@N for a configured version
	name      string
	key       providers.Key
	provider  providers.Provider
	dev       *device
	policy    *Policy
	immediate bool
	oneShot   providers.OneShot         // nil if the key has no fast path
	verifier  providers.OneShotVerifier // nil if the key cannot verify in its device
	// version is the version key is; versions, for a provider that keeps
	// versions, holds the key's live versions. A pinned key (NAME@N) is
	// version alone; any other uses versions when it has them.
	version  int
	pinned   bool
	versions *keyVersions
}

// New returns an agent serving the given providers. It fails if a key names
// a provider that does not exist or two providers share a name.
func New(opts Options) (*Agent, error) {
	a := &Agent{
		byName:  make(map[string]providers.Provider),
		devices: make(map[providers.Provider]*device),
		keys:    make(map[string]KeyConfig),
		limits:  opts.Limits,
		log:     opts.Logger,
		version: opts.Version,
		uid:     uint32(os.Geteuid()),
		started: time.Now(),
		audit:   opts.Audit,
		observe: opts.Observe,
		live:    make(map[*Session]struct{}),
		stop:    make(chan struct{}),

		auditLimit: newLogLimiter(logLinesPerSecond, logLinesBurst),
		logLimit:   newLogLimiter(logLinesPerSecond, logLinesBurst),
		clockFn:    opts.Now,
		versions:   make(map[versionsID]*keyVersions),
	}
	if a.clockFn == nil {
		a.clockFn = time.Now
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.limits.fill()
	a.callers.total = providers.NewBudget(a.limits.MaxBytes, nil, "limits.max_bytes")
	if opts.DefaultPolicy != nil {
		a.defaultPolicy = *opts.DefaultPolicy
	} else {
		a.defaultPolicy = OwnerPolicy(a.uid)
	}
	if len(opts.Providers) == 0 {
		return nil, errors.New("agent: no providers")
	}
	for _, p := range opts.Providers {
		if _, dup := a.byName[p.Name()]; dup {
			return nil, fmt.Errorf("agent: two providers named %q", p.Name())
		}
		a.byName[p.Name()] = p
		a.providers = append(a.providers, p)
		a.devices[p] = newDevice(p, a.log, a.callers.shared.Load)
	}
	keys, err := a.keyMap(opts.Keys)
	if err != nil {
		return nil, err
	}
	a.keys = keys
	a.noteIdentityNeedsLocked(a.keys, a.defaultPolicy)
	a.background.Go(a.tick)
	a.watch(opts.HealthInterval)
	switch {
	case opts.VersionRefresh == 0:
		a.background.Go(func() { a.versionLoop(DefaultVersionRefresh) })
	case opts.VersionRefresh > 0:
		a.background.Go(func() { a.versionLoop(opts.VersionRefresh) })
	}
	return a, nil
}

// watch starts a prober per provider and waits for the first probes, at
// most the longest timeout: a status asked for at once then reports what
// the devices said rather than nothing.
func (a *Agent) watch(interval time.Duration) {
	if interval <= 0 {
		interval = DefaultHealthInterval
	}
	var longest time.Duration
	firsts := make([]chan struct{}, 0, len(a.providers))
	for _, p := range a.providers {
		d := a.devices[p]
		first := make(chan struct{})
		firsts = append(firsts, first)
		longest = max(longest, d.timeout)
		a.background.Go(func() { d.watch(interval, a.stop, first) })
	}
	deadline := time.NewTimer(longest)
	defer deadline.Stop()
	for _, first := range firsts {
		select {
		case <-first:
		case <-deadline.C:
			return
		}
	}
}

func (a *Agent) keyMap(list []KeyConfig) (map[string]KeyConfig, error) {
	keys := make(map[string]KeyConfig, len(list))
	for _, k := range list {
		if _, ok := a.byName[k.Provider]; !ok {
			return nil, fmt.Errorf("agent: key %q: no provider named %q", k.Name, k.Provider)
		}
		if k.Ref == "" {
			k.Ref = k.Name
		}
		keys[k.Name] = k
	}
	return keys, nil
}

// Reload replaces the configured keys and the default policy without
// touching connections. Requests from now on see the new configuration;
// an open context whose key was removed, or now names another key, fails
// at its next request, saying so. Providers cannot change without a
// restart.
func (a *Agent) Reload(keys []KeyConfig, defaultPolicy *Policy) error {
	m, err := a.keyMap(keys)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.keys = m
	if defaultPolicy != nil {
		a.defaultPolicy = *defaultPolicy
	} else {
		a.defaultPolicy = OwnerPolicy(a.uid)
	}
	a.noteIdentityNeedsLocked(a.keys, a.defaultPolicy)
	a.cache.Store(&map[string]*resolved{})
	a.unknown.reset()
	a.gen.Add(1)
	a.mu.Unlock()
	a.revalidateSessions()
	return nil
}

// current checks a key resolved under an older configuration: the same
// name must still name the same key, whose policy may have changed. It
// reads only the configuration, never a provider, so it may run
// anywhere: a name that was found by searching the providers is taken to
// find the same key still. A key the name no longer finds is lost to the
// context, which the error says as a denial: the caller lost every
// operation on it.
func (a *Agent) current(r *resolved) (*resolved, error) {
	if r.gen == a.gen.Load() {
		return r, nil
	}
	a.mu.RLock()
	kc, configured := a.keys[r.name]
	def := a.defaultPolicy
	gen := a.gen.Load()
	a.mu.RUnlock()
	now := *r
	now.gen = gen
	switch {
	case configured && (a.byName[kc.Provider] != r.provider || kc.Ref != r.cref):
		return nil, providers.Publicf(providers.ErrPermissionDenied, "key %q now names another key; the context, which used the old one, was ended", r.name)
	case configured:
		pol := kc.Policy
		now.policy = &pol
	case r.ref != r.name: // configured under another name before
		return nil, providers.Publicf(providers.ErrPermissionDenied, "key %q was removed from the agent's configuration; the context was ended", r.name)
	case a.refClaimed(r):
		return nil, providers.Publicf(providers.ErrPermissionDenied, "key %q is now reachable only through the configured key that names its object; the context was ended", r.name)
	default:
		now.policy = &def
	}
	return &now, nil
}

// revalidateSessions ends, at once, the open contexts that a reload
// revoked, so that they hold no device state until their next request;
// that request is told why. Contexts in use now are checked by their
// request instead.
func (a *Agent) revalidateSessions() {
	a.sessionsMu.Lock()
	sessions := make([]*Session, 0, len(a.live))
	for s := range a.live {
		sessions = append(sessions, s)
	}
	a.sessionsMu.Unlock()
	for _, s := range sessions {
		s.revalidateAll()
	}
}

// tick advances the coarse clock and frees idle contexts.
func (a *Agent) tick() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
		now := a.now.Add(1)
		if idle := a.limits.IdleContextTimeout; idle > 0 {
			cutoff := now - int64((idle+time.Second-1)/time.Second)
			a.sessionsMu.Lock()
			sessions := make([]*Session, 0, len(a.live))
			for s := range a.live {
				sessions = append(sessions, s)
			}
			a.sessionsMu.Unlock()
			for _, s := range sessions {
				s.expire(cutoff)
			}
		}
	}
}

// clock is the time grace periods and rotation schedules are measured by.
func (a *Agent) clock() time.Time { return a.clockFn() }

// Limits returns the agent's limits with defaults filled in.
func (a *Agent) Limits() Limits { return a.limits }

// Close stops the agent's own goroutines and closes every provider.
// Sessions still open fail with ErrClosed. It waits for a health probe or
// version refresh under way to finish, so that nothing the agent started
// touches a provider, or its files, once Close has returned (a software
// keystore's probe makes its directory if it is missing): at most the
// longest provider timeout, past which a device that stopped answering
// keeps its call, as a request's call past its deadline does.
func (a *Agent) Close() error {
	if a.closed.Swap(true) {
		return nil
	}
	close(a.stop)
	a.awaitBackground()
	var errs []error
	for _, p := range a.providers {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}

// awaitBackground waits for the agent's own goroutines to end, at most
// the longest provider timeout.
func (a *Agent) awaitBackground() {
	var longest time.Duration
	for _, d := range a.devices {
		longest = max(longest, d.timeout)
	}
	done := make(chan struct{})
	go func() {
		a.background.Wait()
		close(done)
	}()
	t := time.NewTimer(longest)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		a.log.Warn("closing with a health probe or version refresh still waiting on a provider", "waited", longest)
	}
}

// resolve finds the key a client names. Lookups are cached: the hot path is
// one map read with no allocation.
func (a *Agent) resolve(ctx context.Context, name []byte) (*resolved, error) {
	if m := a.cache.Load(); m != nil {
		if r := (*m)[string(name)]; r != nil {
			return r, nil
		}
	}
	return a.resolveSlow(ctx, string(name))
}

func (a *Agent) resolveSlow(ctx context.Context, name string) (*resolved, error) {
	if a.closed.Load() {
		return nil, providers.ErrClosed
	}
	if base, n, ok := splitVersion(name); !ok {
		return nil, providers.Publicf(providers.ErrKeyNotFound, "key %q not found", name)
	} else if n > 0 {
		return a.resolvePinned(ctx, name, base, n)
	}
	if providers.CheckKeyName(name) != nil {
		return nil, providers.Publicf(providers.ErrKeyNotFound, "key %q not found", name)
	}
	a.mu.RLock()
	keys := a.keys
	kc, configured := keys[name]
	def := a.defaultPolicy
	gen, made := a.gen.Load(), a.made.Load()
	a.mu.RUnlock()
	if a.unknown.has(name, time.Now()) {
		return nil, providers.Publicf(providers.ErrKeyNotFound, "key %q not found", name)
	}
	r := &resolved{name: name, ref: name, cref: name, gen: gen, policy: &def}
	pin := 0 // a configured object of NAME@N: that version alone
	if configured {
		p := a.byName[kc.Provider]
		ref, n, ok := splitVersion(kc.Ref)
		if !ok {
			return nil, a.keyError(gen, made, name, p, providers.ErrKeyNotFound)
		}
		k, err := a.findIn(ctx, p, ref)
		if err != nil {
			return nil, a.keyError(gen, made, name, p, err)
		}
		pol := kc.Policy
		r.key, r.provider, r.policy, r.ref, r.cref, pin = k, p, &pol, ref, kc.Ref, n
	} else {
		// A provider that cannot answer stops the search: a later one's
		// key of the same name is not the key this name means.
		for _, p := range a.providers {
			k, err := a.findIn(ctx, p, name)
			if errors.Is(err, providers.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return nil, a.keyError(gen, made, name, p, err)
			}
			entry, err := a.claimedBy(ctx, keys, p, name, k)
			if err != nil {
				return nil, a.keyError(gen, made, name, p, err)
			}
			if entry != "" {
				a.log.Debug("key name refers to a configured key's object; not reachable by it", "key", name, "provider", p.Name(), "configured", entry)
				continue
			}
			r.key, r.provider = k, p
			break
		}
		if r.key == nil {
			return nil, a.keyError(gen, made, name, nil, providers.ErrKeyNotFound)
		}
	}
	r.dev = a.devices[r.provider]
	if im, ok := r.key.(providers.Immediate); ok {
		r.immediate = im.Immediate()
	}
	r.oneShot, _ = r.key.(providers.OneShot)
	r.verifier, _ = r.key.(providers.OneShotVerifier)
	r.version = 1
	kv, err := a.versionsOf(ctx, r.provider, r.ref)
	if err != nil {
		return nil, a.keyError(gen, made, name, r.provider, err)
	}
	if kv != nil {
		r.versions = kv
		r.version = kv.snap.Load().current().n
	}
	if pin > 0 {
		if err := pinConfigured(r, pin); err != nil {
			return nil, err
		}
	}
	a.mu.Lock()
	if a.gen.Load() == gen { // a reload meanwhile: do not cache the old view
		a.updateCacheLocked(func(m map[string]*resolved) { m[name] = r })
	}
	a.mu.Unlock()
	return r, nil
}

// findIn finds a key in p, within p's timeout.
func (a *Agent) findIn(ctx context.Context, p providers.Provider, ref string) (providers.Key, error) {
	return onDevice(ctx, a.devices[p], func(ctx context.Context) (providers.Key, error) {
		return p.Key(ctx, ref)
	}, nil)
}

// keyError logs a provider's error in full (rate-limited) and returns
// what the client may see. A name found nowhere is remembered for a
// while, unless a reload came meanwhile.
func (a *Agent) keyError(gen, made uint64, name string, p providers.Provider, err error) error {
	if errors.Is(err, providers.ErrKeyNotFound) {
		a.mu.RLock()
		if a.gen.Load() == gen && a.made.Load() == made {
			a.unknown.add(name, time.Now())
		}
		a.mu.RUnlock()
		return providers.Publicf(providers.ErrKeyNotFound, "key %q not found", name)
	}
	d := a.devices[p]
	d.warn("key lookup failed", "key", name, "err", err)
	return d.public(err)
}

// updateCacheLocked publishes a changed copy of the cache.
func (a *Agent) updateCacheLocked(change func(map[string]*resolved)) {
	var m map[string]*resolved
	if old := a.cache.Load(); old != nil {
		m = maps.Clone(*old)
	}
	if m == nil {
		m = make(map[string]*resolved)
	}
	change(m)
	a.cache.Store(&m)
}

// forget drops what is cached about a name, after a key of that name was
// made, deleted or vanished underneath, and about the configured names
// that refer to an object of that name.
func (a *Agent) forget(name string) {
	a.mu.Lock()
	a.updateCacheLocked(func(m map[string]*resolved) {
		delete(m, name)
		for k := range m {
			if baseName([]byte(k)) == name {
				delete(m, k) // its versions, NAME@N
			}
		}
	})
	a.unknown.remove(name)
	for _, kc := range a.keys {
		if kc.Ref == name {
			a.unknown.remove(kc.Name)
		}
	}
	a.made.Add(1)
	a.mu.Unlock()
	a.forgetVersions(name)
}

// forgetVersions makes the next reading of the versions of objects named
// ref, in any provider, open every version anew, after such an object was
// made, deleted or vanished. Otherwise a refresh hands on the handles of
// the versions the snapshot held, which a key made again under the same
// name (same numbers and, in a keystore that records creation to the
// second, the same creation time) cannot be told apart from: the name
// failed as "not found" until the agent restarted. The holders stay in
// place, so every name resolved to them (a configured name for the
// object among them) goes on seeing rotations.
func (a *Agent) forgetVersions(ref string) {
	a.versionsMu.Lock()
	for id, kv := range a.versions {
		if id.ref == ref {
			kv.reopen.Store(true)
		}
	}
	a.versionsMu.Unlock()
}

// Immediate reports whether operations on the named key run on the CPU
// without waiting (providers.Immediate), so a server may run them inline.
// It never calls a provider: it answers from the keys already resolved,
// and a key not resolved yet reports false, since finding it may wait on
// a device.
func (a *Agent) Immediate(name []byte) bool {
	r := a.cached(name)
	return r != nil && r.immediate
}

// cached returns the named key if it is resolved already, else nil.
func (a *Agent) cached(name []byte) *resolved {
	if m := a.cache.Load(); m != nil {
		return (*m)[string(name)]
	}
	return nil
}

// check returns nil if peer may do one of ops with r.
func (a *Agent) check(peer Peer, r *resolved, ops Ops) error {
	if r.policy.allows(peer, ops) {
		return nil
	}
	return a.denied(peer, r.policy, r.name, ops)
}

// MayManage reports whether peer may change keys (generate, import,
// delete, rotate, retire). Every such request from a peer that may not is
// refused before any provider is reached, so it never waits on a device.
func (a *Agent) MayManage(peer Peer) bool { return a.isAdmin(peer) }

func (a *Agent) checkAdmin(peer Peer) error {
	if a.isAdmin(peer) {
		return nil
	}
	return providers.Publicf(providers.ErrPermissionDenied, "key management is for uid %d or root; %s", a.uid, peer)
}
