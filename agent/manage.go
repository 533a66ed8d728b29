package agent

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"slices"
	"time"

	"github.com/hmac-agent/hmac-agent/agent/status"
	"github.com/hmac-agent/hmac-agent/internal/memlock"
	"github.com/hmac-agent/hmac-agent/providers"
)

// provider returns the named provider, or the default for an empty name.
func (a *Agent) provider(name string) (providers.Provider, error) {
	if name == "" {
		return a.providers[0], nil
	}
	if p, ok := a.byName[name]; ok {
		return p, nil
	}
	return nil, providers.Publicf(providers.ErrInvalidArgument, "no provider named %q", name)
}

// ListKeys lists the keys peer may use (every key, for the agent's owner
// and root), sorted by name. It never returns key bytes.
func (a *Agent) ListKeys(ctx context.Context, peer Peer) ([]providers.KeyInfo, error) {
	admin := a.checkAdmin(peer) == nil
	var out []providers.KeyInfo
	seen := make(map[string]bool)
	a.mu.RLock()
	keys := a.keys
	def := a.defaultPolicy
	a.mu.RUnlock()
	for name, kc := range keys {
		if !admin && !kc.Policy.allows(peer, OpMAC|OpVerify) {
			continue
		}
		r, err := a.resolve(ctx, []byte(name))
		if err != nil {
			continue
		}
		info := providers.KeyInfo{Name: name, Provider: r.provider.Name(), Kind: r.provider.Kind()}
		for _, alg := range providers.Algorithms() {
			if r.key.Supports(alg) {
				info.Algorithms = append(info.Algorithms, alg)
			}
		}
		a.addVersions(&info, r)
		out = append(out, info)
		seen[name] = true
	}
	if admin || def.allows(peer, OpMAC|OpVerify) {
		for _, p := range a.providers {
			infos, err := onDevice(ctx, a.devices[p], p.Keys, nil)
			if timedOut(err) {
				return nil, err
			}
			if err != nil {
				a.devices[p].warn("listing keys failed", "err", err)
				return nil, providers.Publicf(providers.ErrUnavailable, "provider %q cannot list its keys", p.Name())
			}
			for _, info := range infos {
				if _, configured := keys[info.Name]; configured || seen[info.Name] {
					continue // shadowed by configuration or an earlier provider
				}
				if a.claimedObject(ctx, keys, p, info.Name) {
					continue // reachable only through its [[key]] entry
				}
				seen[info.Name] = true
				if r := a.cached([]byte(info.Name)); r != nil && r.provider == p {
					a.addVersions(&info, r)
				} else if v, ok := p.(providers.Versioner); ok {
					// Read, not tracked: listing must not make the agent
					// refresh every key it lists from then on.
					vs, err := onDevice(ctx, a.devices[p], func(ctx context.Context) ([]providers.VersionInfo, error) {
						return v.Versions(ctx, info.Name)
					}, nil)
					if err == nil {
						info.Versions = vs
						for _, vi := range vs {
							if vi.State == providers.VersionCurrent {
								info.Version = vi.Version
							}
						}
					}
				}
				out = append(out, info)
			}
		}
	}
	slices.SortFunc(out, func(x, y providers.KeyInfo) int {
		switch {
		case x.Name < y.Name:
			return -1
		case x.Name > y.Name:
			return 1
		}
		return 0
	})
	return out, nil
}

// claimedObject reports whether the object p lists as name is one a
// [[key]] entry names, or cannot be told apart from one.
func (a *Agent) claimedObject(ctx context.Context, keys map[string]KeyConfig, p providers.Provider, name string) bool {
	k, err := p.Key(ctx, name)
	if err != nil {
		return true
	}
	entry, err := a.claimedBy(ctx, keys, p, name, k)
	return err != nil || entry != ""
}

// GenerateKey creates a key in the named provider (empty: the default).
// Only the agent's uid or root may. Errors wrap ErrPermissionDenied,
// ErrNotSupported, ErrKeyExists or ErrInvalidArgument.
func (a *Agent) GenerateKey(ctx context.Context, peer Peer, provider, name string, length int) (providers.KeyInfo, error) {
	p, err := a.managed(peer, provider, name)
	if err != nil {
		return providers.KeyInfo{}, err
	}
	g, ok := p.(providers.Generator)
	if !ok {
		return providers.KeyInfo{}, providers.Publicf(providers.ErrNotSupported, "provider %q cannot generate keys", p.Name())
	}
	info, err := a.manageCall(ctx, p, "generate", name, func(ctx context.Context) (providers.KeyInfo, error) {
		return g.GenerateKey(ctx, name, length)
	})
	a.forget(name)
	return info, a.manageError(peer, "generate", p, name, err)
}

// ImportKey stores secret as a new key in the named provider. The caller
// should zero secret afterwards. Errors as for GenerateKey.
func (a *Agent) ImportKey(ctx context.Context, peer Peer, provider, name string, secret []byte) (providers.KeyInfo, error) {
	p, err := a.managed(peer, provider, name)
	if err != nil {
		return providers.KeyInfo{}, err
	}
	im, ok := p.(providers.Importer)
	if !ok {
		return providers.KeyInfo{}, providers.Publicf(providers.ErrNotSupported, "provider %q cannot import keys", p.Name())
	}
	// The call gets a copy of its own, zeroed when the call ends: a call
	// past its deadline goes on after ImportKey has returned and its
	// caller has wiped secret, and must still store the key it was
	// given, not zeros.
	own, err := memlock.New(secret)
	if own == nil {
		return providers.KeyInfo{}, a.manageError(peer, "import", p, name, err)
	}
	info, err := a.manageCall(ctx, p, "import", name, func(ctx context.Context) (providers.KeyInfo, error) {
		defer own.Destroy()
		return im.ImportKey(ctx, name, own.Bytes())
	})
	a.forget(name)
	return info, a.manageError(peer, "import", p, name, err)
}

// ImportWrappedKey unwraps a key under a key the provider already holds
// and stores it under name; the key's bytes never pass through the agent.
// Errors as for GenerateKey.
func (a *Agent) ImportWrappedKey(ctx context.Context, peer Peer, provider, name, wrappingKey string, wrapped []byte) (providers.KeyInfo, error) {
	p, err := a.managed(peer, provider, name)
	if err != nil {
		return providers.KeyInfo{}, err
	}
	wi, ok := p.(providers.WrappedImporter)
	if !ok {
		return providers.KeyInfo{}, providers.Publicf(providers.ErrNotSupported, "provider %q cannot import wrapped keys", p.Name())
	}
	info, err := a.manageCall(ctx, p, "import_wrapped", name, func(ctx context.Context) (providers.KeyInfo, error) {
		return wi.ImportWrappedKey(ctx, name, wrappingKey, wrapped)
	})
	a.forget(name)
	return info, a.manageError(peer, "import_wrapped", p, name, err)
}

// DeleteKey destroys a key. With no provider named, the key is looked up as
// a client would find it. Errors wrap ErrPermissionDenied, ErrNotSupported
// or ErrKeyNotFound.
func (a *Agent) DeleteKey(ctx context.Context, peer Peer, provider, name string) error {
	if err := a.checkAdmin(peer); err != nil {
		a.auditUse(peer, "delete", name, 0, err, 0, time.Time{})
		return err
	}
	ref := name
	if provider == "" {
		r, err := a.resolve(ctx, []byte(name))
		if err != nil {
			return err
		}
		provider, ref = r.provider.Name(), r.ref
	}
	p, err := a.provider(provider)
	if err != nil {
		return err
	}
	d, ok := p.(providers.Deleter)
	if !ok {
		return providers.Publicf(providers.ErrNotSupported, "provider %q cannot delete keys", p.Name())
	}
	_, err = a.manageCall(ctx, p, "delete", name, func(ctx context.Context) (providers.KeyInfo, error) {
		return providers.KeyInfo{}, d.DeleteKey(ctx, ref)
	})
	a.forget(name)
	a.forgetVersions(ref)
	return a.manageError(peer, "delete", p, name, err)
}

// manageCall runs a key management call within p's timeout. One that
// passes it may still finish: the key's cached view is dropped then, and
// the log says how it ended, since the client was told it is unavailable.
func (a *Agent) manageCall(ctx context.Context, p providers.Provider, op, name string, f func(context.Context) (providers.KeyInfo, error)) (providers.KeyInfo, error) {
	d := a.devices[p]
	change := 1
	if op == "delete" {
		change = -1
	}
	var lateErr error // the late call's own, written and read on its goroutine
	info, err := onDevice(ctx, d, func(ctx context.Context) (providers.KeyInfo, error) {
		info, err := f(ctx)
		lateErr = err
		return info, err
	}, func(providers.KeyInfo) {
		a.forget(name)
		if lateErr == nil {
			d.keysChanged(change)
		}
		a.log.Warn("key "+op+" finished after its deadline", "key", name, "provider", p.Name(), "err", lateErr)
	})
	if err == nil {
		d.keysChanged(change)
	}
	return info, err
}

func (a *Agent) managed(peer Peer, provider, name string) (providers.Provider, error) {
	if err := a.checkAdmin(peer); err != nil {
		a.auditUse(peer, "manage", name, 0, err, 0, time.Time{})
		return nil, err
	}
	if err := providers.CheckKeyName(name); err != nil {
		return nil, providers.Publicf(providers.ErrInvalidArgument, "%s", err) // names only what the client sent
	}
	return a.provider(provider)
}

// manageError audits a management operation, logs a failure in full and
// returns a message the client may see, naming the key and provider.
func (a *Agent) manageError(peer Peer, op string, p providers.Provider, name string, err error) error {
	a.auditUse(peer, op, name, 0, err, 0, time.Time{})
	if err == nil {
		a.log.Info("key "+op, "key", name, "provider", p.Name())
		return nil
	}
	a.warnFor(peer, "key "+op+" failed", "key", name, "provider", p.Name(), "err", err, "uid", peer.UID)
	code := providers.ErrUnavailable
	for _, s := range []error{providers.ErrKeyExists, providers.ErrKeyNotFound, providers.ErrInvalidArgument, providers.ErrNotSupported, providers.ErrClosed} {
		if errors.Is(err, s) {
			code = s
			break
		}
	}
	if pe, ok := errors.AsType[*providers.PublicError](err); ok {
		return a.devices[p].public(pe)
	}
	return providers.Publicf(code, "%s key %q in provider %q: %s", op, name, p.Name(), code)
}

// Providers lists the agent's providers in lookup order.
func (a *Agent) Providers() []providers.Provider { return a.providers }

// Healthy reports p's health as last found, without asking it: by the
// background probes, and by the requests it served since.
func (a *Agent) Healthy(p providers.Provider) bool {
	d := a.devices[p]
	return d != nil && d.healthy(time.Now())
}

// Status and ProviderStatus are the agent's account of itself.
type (
	Status         = status.Status
	ProviderStatus = status.Provider
)

// StatusFor is Status as peer may see it: with the open connections
// peer may know of. Another user's executables and units are theirs to
// know, so only the agent's owner and root see every connection.
func (a *Agent) StatusFor(ctx context.Context, peer Peer) Status {
	st := a.Status(ctx)
	if !peer.Known {
		return st
	}
	admin := a.checkAdmin(peer) == nil
	a.sessionsMu.Lock()
	sessions := make([]*Session, 0, len(a.live))
	for s := range a.live {
		sessions = append(sessions, s)
	}
	a.sessionsMu.Unlock()
	for _, s := range sessions {
		p := s.peer
		if !p.Known || (!admin && p.UID != peer.UID) {
			continue
		}
		sp := status.Peer{UID: p.UID, GID: p.GID, PID: p.PID, Contexts: s.Contexts()}
		if id := p.Identity; id != nil {
			sp.Unit, sp.Cgroup, sp.Container, sp.Executable = id.Unit, id.Cgroup, id.Container, id.Executable
			if id.ExecutableSHA256 != nil {
				sp.ExecutableSHA256 = hex.EncodeToString(id.ExecutableSHA256)
			}
		}
		st.Peers = append(st.Peers, sp)
	}
	slices.SortFunc(st.Peers, func(x, y status.Peer) int { return cmp.Compare(x.PID, y.PID) })
	return st
}

// Contexts is how many contexts are open in the agent.
func (a *Agent) Contexts() int64 { return a.contexts.Load() }

// Status reports the agent's state. Any connected peer may ask. It never
// waits on a device: each provider's health and key count are what its
// background probe found last, with their age.
func (a *Agent) Status(context.Context) Status {
	now := time.Now()
	st := Status{
		Version:     a.version,
		Started:     a.started.UTC().Truncate(time.Second),
		Uptime:      now.Sub(a.started).Seconds(),
		PID:         os.Getpid(),
		Connections: a.sessions.Load(),
		Contexts:    a.contexts.Load(),
	}
	for _, p := range a.providers {
		ps := a.devices[p].status(now)
		st.Keys += ps.Keys
		st.Providers = append(st.Providers, ps)
	}
	return st
}
