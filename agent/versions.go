package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// Key versions, as the agent serves them. A plain name MACs with its
// key's current version and verifies against every live version: the
// current one and the previous ones that are neither retired nor past
// their key's verify_grace. NAME@N means version N alone, while it is
// live. The versions come from the provider (providers.Versioner), which
// several agents may share; each agent reads them again every
// VersionRefresh, so a rotation made through another agent is served
// here within that interval. A provider that does not keep versions
// serves each key as its version 1.

// DefaultVersionRefresh is how often the agent reads each key's versions
// again from its provider.
const DefaultVersionRefresh = 2 * time.Second

// versionKey is one version of a key, opened in its provider.
type versionKey struct {
	n        int
	key      providers.Key
	oneShot  providers.OneShot         // nil if the key has no fast path
	verifier providers.OneShotVerifier // nil if it cannot verify in its device
	created  time.Time                 // as the provider reported it, to tell a version made anew under an old number
}

func newVersionKey(n int, k providers.Key, created time.Time) versionKey {
	vk := versionKey{n: n, key: k, created: created}
	vk.oneShot, _ = k.(providers.OneShot)
	vk.verifier, _ = k.(providers.OneShotVerifier)
	return vk
}

// versionSnapshot is a key's versions as last read. It is never changed
// once published.
type versionSnapshot struct {
	// live are the versions that verify, the current one first.
	live  []versionKey
	infos []providers.VersionInfo
}

func (s *versionSnapshot) current() versionKey { return s.live[0] }

func (s *versionSnapshot) verifies(n int) bool {
	for _, v := range s.live {
		if v.n == n {
			return true
		}
	}
	return false
}

// keyVersions holds one provider key's versions for every name that
// reaches it. It is safe for concurrent use.
type keyVersions struct {
	provider  providers.Provider
	versioner providers.Versioner
	ref       string
	snap      atomic.Pointer[versionSnapshot]
	refreshMu sync.Mutex // one refresh at a time
	// reopen makes the next refresh open every version anew rather than
	// keep the handles it has (see forgetVersions).
	reopen atomic.Bool
}

type versionsID struct {
	provider providers.Provider
	ref      string
}

// splitVersion splits "NAME@N" into NAME and N; a plain name has version
// 0. A malformed suffix is reported as a key that is not there, as any
// other name that cannot exist.
func splitVersion(name string) (base string, n int, ok bool) {
	base, num, versioned := strings.Cut(name, "@")
	if !versioned {
		return name, 0, true
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || strconv.Itoa(n) != num {
		return base, 0, false
	}
	return base, n, true
}

// baseName is the name a policy is found under: versions share their
// key's policy.
func baseName(name []byte) string {
	base, _, _ := strings.Cut(string(name), "@")
	return base
}

// versionsOf returns the versions holder for ref in p, read from the
// provider now, or nil if p keeps no versions.
func (a *Agent) versionsOf(ctx context.Context, p providers.Provider, ref string) (*keyVersions, error) {
	v, ok := p.(providers.Versioner)
	if !ok {
		return nil, nil
	}
	id := versionsID{p, ref}
	a.versionsMu.Lock()
	kv := a.versions[id]
	if kv == nil {
		kv = &keyVersions{provider: p, versioner: v, ref: ref}
		a.versions[id] = kv
	}
	a.versionsMu.Unlock()
	if err := a.refresh(ctx, kv); err != nil {
		return nil, err
	}
	return kv, nil
}

// grace returns how long a superseded version of ref in p keeps
// verifying, from the configuration; zero means until it is retired.
func (a *Agent) grace(p providers.Provider, ref string) time.Duration {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, kc := range a.keys {
		if kc.Provider == p.Name() && kc.Ref == ref && kc.VerifyGrace > 0 {
			return kc.VerifyGrace
		}
	}
	return 0
}

// refresh reads kv's versions from its provider and publishes them,
// opening the versions not opened before.
func (a *Agent) refresh(ctx context.Context, kv *keyVersions) (err error) {
	kv.refreshMu.Lock()
	defer kv.refreshMu.Unlock()
	dev := a.devices[kv.provider]
	infos, err := onDevice(ctx, dev, func(ctx context.Context) ([]providers.VersionInfo, error) {
		return kv.versioner.Versions(ctx, kv.ref)
	}, nil)
	if err != nil {
		return err
	}
	grace := a.grace(kv.provider, kv.ref)
	now := a.clock()
	old := kv.snap.Load()
	if kv.reopen.Swap(false) {
		old = nil
		defer func() {
			if err != nil { // not published: the next refresh reopens
				kv.reopen.Store(true)
			}
		}()
	}
	next := &versionSnapshot{infos: infos}
	var current *versionKey
	var previous []versionKey
	for i := len(infos) - 1; i >= 0; i-- {
		info := infos[i]
		switch info.State {
		case providers.VersionCurrent:
		case providers.VersionPrevious:
			if grace > 0 && !info.Superseded.IsZero() && !now.Before(info.Superseded.Add(grace)) {
				continue
			}
		default:
			continue
		}
		k := openedVersion(old, info.Version, info.Created)
		if k == nil {
			k, err = onDevice(ctx, dev, func(ctx context.Context) (providers.Key, error) {
				return kv.versioner.KeyVersion(ctx, kv.ref, info.Version)
			}, nil)
			if errors.Is(err, providers.ErrKeyNotFound) {
				continue // destroyed since Versions answered
			}
			if err != nil {
				return err
			}
		}
		vk := newVersionKey(info.Version, k, info.Created)
		if info.State == providers.VersionCurrent && current == nil {
			current = &vk
		} else {
			previous = append(previous, vk)
		}
	}
	if current == nil {
		return fmt.Errorf("agent: key %q in provider %q has no current version: %w", kv.ref, kv.provider.Name(), providers.ErrKeyNotFound)
	}
	next.live = append([]versionKey{*current}, previous...)
	kv.snap.Store(next)
	return nil
}

// openedVersion returns version n from s if it is there and was created
// at created: a key deleted and made again (through another agent,
// between two refreshes) has a version n that is not the one opened.
func openedVersion(s *versionSnapshot, n int, created time.Time) providers.Key {
	if s == nil {
		return nil
	}
	for _, v := range s.live {
		if v.n == n && v.created.Equal(created) {
			return v.key
		}
	}
	return nil
}

// liveVersion returns live version n from s, or nil.
func liveVersion(s *versionSnapshot, n int) providers.Key {
	for _, v := range s.live {
		if v.n == n {
			return v.key
		}
	}
	return nil
}

// macKey returns the key and version that compute r's new tags.
func (r *resolved) macKey() versionKey {
	if r.pinned || r.versions == nil {
		return versionKey{n: r.version, key: r.key, oneShot: r.oneShot, verifier: r.verifier}
	}
	return r.versions.snap.Load().current()
}

// verifyKeys returns the versions a tag for r may come from, the one that
// computes new tags first.
func (r *resolved) verifyKeys() []versionKey {
	if r.pinned || r.versions == nil {
		return []versionKey{{n: r.version, key: r.key, oneShot: r.oneShot, verifier: r.verifier}}
	}
	return r.versions.snap.Load().live
}

// usable checks that a pinned version still verifies.
func (r *resolved) usable() error {
	if r.pinned && r.versions != nil && !r.versions.snap.Load().verifies(r.version) {
		return providers.Publicf(providers.ErrKeyNotFound, "version %d of key %q is retired", r.version, r.name)
	}
	return nil
}

// resolvePinned resolves NAME@N: the key NAME resolves to, at version n.
// Its policy is NAME's.
func (a *Agent) resolvePinned(ctx context.Context, name, base string, n int) (*resolved, error) {
	r0, err := a.resolve(ctx, []byte(base))
	if err != nil {
		return nil, err
	}
	// A caller trying version numbers must not turn each try into a
	// read of the provider's versions.
	if a.unknown.has(name, time.Now()) {
		return nil, providers.Publicf(providers.ErrKeyNotFound, "key %q has no live version %d", base, n)
	}
	r := *r0
	r.pinned, r.version = true, n
	switch {
	case r0.pinned && n != r0.version:
		// A configured entry naming one version reaches that one only.
		return nil, providers.Publicf(providers.ErrKeyNotFound, "key %q has no version %d", base, n)
	case r0.pinned:
	case r0.versions == nil && n == 1:
	case r0.versions == nil:
		return nil, providers.Publicf(providers.ErrKeyNotFound, "key %q has no version %d", base, n)
	default:
		k := liveVersion(r0.versions.snap.Load(), n)
		if k == nil {
			// Perhaps made through another agent since the last refresh.
			if err := a.refresh(ctx, r0.versions); err != nil {
				return nil, a.keyError(r0.gen, a.made.Load(), base, r0.provider, err)
			}
			if k = liveVersion(r0.versions.snap.Load(), n); k == nil {
				a.unknown.add(name, time.Now())
				return nil, providers.Publicf(providers.ErrKeyNotFound, "key %q has no live version %d", base, n)
			}
		}
		r.key = k
		r.oneShot, _ = k.(providers.OneShot)
		r.verifier, _ = k.(providers.OneShotVerifier)
	}
	a.mu.Lock()
	if a.gen.Load() == r.gen {
		a.updateCacheLocked(func(m map[string]*resolved) { m[name] = &r })
	}
	a.mu.Unlock()
	return &r, nil
}

// pinConfigured makes r, a configured key whose object is NAME@N, that
// version alone.
func pinConfigured(r *resolved, n int) error {
	r.pinned, r.version = true, n
	if r.versions == nil {
		if n != 1 {
			return providers.Publicf(providers.ErrKeyNotFound, "key %q: its provider keeps no version %d", r.name, n)
		}
		return nil
	}
	k := liveVersion(r.versions.snap.Load(), n)
	if k == nil {
		return providers.Publicf(providers.ErrKeyNotFound, "key %q: version %d is not live", r.name, n)
	}
	r.key = k
	r.oneShot, _ = k.(providers.OneShot)
	r.verifier, _ = k.(providers.OneShotVerifier)
	return nil
}

// RefreshVersions reads every key's versions again from its provider,
// retires the versions past their grace and rotates the keys whose
// rotate_every has passed. The agent runs it every VersionRefresh.
func (a *Agent) RefreshVersions(ctx context.Context) {
	a.maintainVersions(ctx)
	a.versionsMu.Lock()
	all := make([]*keyVersions, 0, len(a.versions))
	for _, kv := range a.versions {
		all = append(all, kv)
	}
	a.versionsMu.Unlock()
	for _, kv := range all {
		err := a.refresh(ctx, kv)
		switch {
		case errors.Is(err, providers.ErrKeyNotFound):
			// Deleted, here or through another agent: stop reading it,
			// and let the next use find out afresh.
			a.versionsMu.Lock()
			delete(a.versions, versionsID{kv.provider, kv.ref})
			a.versionsMu.Unlock()
			a.forget(kv.ref)
		case err != nil:
			a.devices[kv.provider].warn("reading key versions failed", "key", kv.ref, "err", err)
		}
	}
}

// maintainVersions retires and rotates the configured keys whose
// configuration asks for it.
func (a *Agent) maintainVersions(ctx context.Context) {
	a.mu.RLock()
	var due []KeyConfig
	for _, kc := range a.keys {
		if kc.VerifyGrace > 0 || kc.RotateEvery > 0 {
			due = append(due, kc)
		}
	}
	a.mu.RUnlock()
	for _, kc := range due {
		r, err := a.resolve(ctx, []byte(kc.Name))
		if err != nil || r.versions == nil || r.pinned {
			continue // reported when a client asks for it
		}
		if err := a.refresh(ctx, r.versions); err != nil {
			continue
		}
		now := a.clock()
		snap := r.versions.snap.Load()
		for _, info := range snap.infos {
			if kc.VerifyGrace > 0 && info.State == providers.VersionPrevious && !info.Superseded.IsZero() && !now.Before(info.Superseded.Add(kc.VerifyGrace)) {
				a.retireExpired(ctx, kc, r, info)
			}
			if kc.RotateEvery > 0 && info.State == providers.VersionCurrent && !now.Before(info.Created.Add(kc.RotateEvery)) {
				a.rotateDue(ctx, kc, r, info)
			}
		}
		a.refresh(ctx, r.versions)
	}
}

func (a *Agent) retireExpired(ctx context.Context, kc KeyConfig, r *resolved, info providers.VersionInfo) {
	err := r.dev.call(ctx, func(ctx context.Context) error {
		return r.versions.versioner.RetireVersion(ctx, r.ref, info.Version, false)
	}, nil)
	a.logVersionChange("retire", kc.Name, r, info.Version, err)
}

func (a *Agent) rotateDue(ctx context.Context, kc KeyConfig, r *resolved, info providers.VersionInfo) {
	next, err := onDevice(ctx, r.dev, func(ctx context.Context) (providers.VersionInfo, error) {
		return r.versions.versioner.RotateKey(ctx, r.ref, nil, 0)
	}, nil)
	a.logVersionChange("rotate", kc.Name, r, next.Version, err)
}

// logVersionChange logs and audits a change the agent made by itself.
func (a *Agent) logVersionChange(op, name string, r *resolved, version int, err error) {
	if err != nil {
		a.log.Warn("automatic key "+op+" failed", "key", name, "provider", r.provider.Name(), "err", err)
	} else {
		a.log.Info("key "+op+"d by the agent", "key", name, "provider", r.provider.Name(), "version", version)
	}
	a.auditUseVersion(Peer{}, op, name, 0, err, 0, time.Time{}, version, false)
}

// versionLoop refreshes versions until the agent closes; closing cancels
// a refresh under way.
func (a *Agent) versionLoop(interval time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-a.stop
		cancel()
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
		a.RefreshVersions(ctx)
	}
}
