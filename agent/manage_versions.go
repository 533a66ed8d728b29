package agent

import (
	"context"
	"errors"
	"github.com/hmac-agent/hmac-agent/internal/memlock"
	"slices"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// addVersions fills in a listed key's versions as last read.
func (a *Agent) addVersions(info *providers.KeyInfo, r *resolved) {
	if r.versions == nil {
		return
	}
	snap := r.versions.snap.Load()
	info.Version = snap.current().n
	info.Versions = slices.Clone(snap.infos)
	if grace := a.grace(r.provider, r.ref); grace > 0 {
		for i, v := range info.Versions {
			if v.State == providers.VersionPrevious && !v.Superseded.IsZero() {
				info.Versions[i].VerifiesUntil = v.Superseded.Add(grace)
			}
		}
	}
}

// versioned finds the provider and the object a management request on
// a key's versions names: with no provider named, the key as a client
// would find it. Only the agent's uid or root may manage keys.
func (a *Agent) versioned(ctx context.Context, peer Peer, op, provider, name string) (providers.Provider, providers.Versioner, string, error) {
	if err := a.checkAdmin(peer); err != nil {
		a.auditUse(peer, op, name, 0, err, 0, time.Time{})
		return nil, nil, "", err
	}
	if err := providers.CheckKeyName(name); err != nil {
		return nil, nil, "", providers.Publicf(providers.ErrInvalidArgument, "%s", err)
	}
	ref := name
	if provider == "" {
		r, err := a.resolve(ctx, []byte(name))
		if err != nil {
			return nil, nil, "", err
		}
		provider, ref = r.provider.Name(), r.ref
	}
	p, err := a.provider(provider)
	if err != nil {
		return nil, nil, "", err
	}
	v, ok := p.(providers.Versioner)
	if !ok {
		return nil, nil, "", providers.Publicf(providers.ErrNotSupported, "provider %q does not keep key versions", p.Name())
	}
	return p, v, ref, nil
}

// RotateKey adds a version to a key and makes it current: generated in
// the provider (length bytes, 0 for its default) when secret is nil, else
// imported from secret, which the caller zeroes afterwards. Contexts open
// now keep the version they opened with. Errors wrap
// ErrPermissionDenied, ErrNotSupported, ErrKeyNotFound or
// ErrInvalidArgument.
func (a *Agent) RotateKey(ctx context.Context, peer Peer, provider, name string, secret []byte, length int) (providers.VersionInfo, error) {
	p, v, ref, err := a.versioned(ctx, peer, "rotate", provider, name)
	if err != nil {
		return providers.VersionInfo{}, err
	}
	// An imported secret goes to the call in a copy of its own, as in
	// ImportKey: a call past its deadline goes on after RotateKey has
	// returned and its caller has wiped secret.
	var own *memlock.Secret
	if secret != nil {
		if own, err = memlock.New(secret); own == nil {
			return providers.VersionInfo{}, a.manageError(peer, "rotate", p, name, err)
		}
	}
	info, err := onDevice(ctx, a.devices[p], func(ctx context.Context) (providers.VersionInfo, error) {
		if own == nil {
			return v.RotateKey(ctx, ref, nil, length)
		}
		defer own.Destroy()
		return v.RotateKey(ctx, ref, own.Bytes(), length)
	}, nil)
	a.afterVersionChange(ctx, p, ref)
	if err == nil {
		a.log.Info("key rotated", "key", name, "provider", p.Name(), "version", info.Version)
		a.auditUseVersion(peer, "rotate", name, 0, nil, 0, time.Time{}, info.Version, false)
		return info, nil
	}
	return info, a.manageError(peer, "rotate", p, name, err)
}

// RetireVersion stops version n of a key verifying and, with destroy,
// deletes it from its provider. Retiring the current version is
// ErrInvalidArgument. Errors as for RotateKey.
func (a *Agent) RetireVersion(ctx context.Context, peer Peer, provider, name string, n int, destroy bool) error {
	op, logged := "retire", "key version retired"
	if destroy {
		op, logged = "destroy", "key version destroyed"
	}
	p, v, ref, err := a.versioned(ctx, peer, op, provider, name)
	if err != nil {
		return err
	}
	if n < 1 {
		return providers.Publicf(providers.ErrInvalidArgument, "no version %d: versions start at 1", n)
	}
	err = a.devices[p].call(ctx, func(ctx context.Context) error {
		return v.RetireVersion(ctx, ref, n, destroy)
	}, nil)
	a.afterVersionChange(ctx, p, ref)
	if err == nil {
		a.log.Info(logged, "key", name, "provider", p.Name(), "version", n)
		a.auditUseVersion(peer, op, name, 0, nil, 0, time.Time{}, n, false)
		return nil
	}
	err = a.manageError(peer, op, p, name, err)
	if errors.Is(err, providers.ErrInvalidArgument) {
		// The contract's one reason: the version is the current one.
		return providers.Publicf(providers.ErrInvalidArgument, "version %d is the current version of key %q and cannot be retired; rotate first", n, name)
	}
	return err
}

// afterVersionChange reads a key's versions again at once, so that this
// agent serves a change made through it from the next request on.
func (a *Agent) afterVersionChange(ctx context.Context, p providers.Provider, ref string) {
	a.mu.Lock()
	a.unknown.remove(ref)
	for _, kc := range a.keys {
		if kc.Ref == ref && kc.Provider == p.Name() {
			a.unknown.remove(kc.Name)
		}
	}
	a.mu.Unlock()
	a.versionsMu.Lock()
	kv := a.versions[versionsID{p, ref}]
	a.versionsMu.Unlock()
	if kv != nil {
		if err := a.refresh(ctx, kv); err != nil {
			a.devices[p].warn("reading key versions failed", "key", ref, "err", err)
		}
	}
}
