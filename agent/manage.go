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
		out = append(out, info)
		seen[name] = true
	}
	if admin || def.allows(peer, OpMAC|OpVerify) {
		for _, p := range a.providers {
			infos, err := p.Keys(ctx)
			if err != nil {
				a.log.Warn("listing keys failed", "provider", p.Name(), "err", err)
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
	info, err := g.GenerateKey(ctx, name, length)
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
	info, err := im.ImportKey(ctx, name, secret)
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
	info, err := wi.ImportWrappedKey(ctx, name, wrappingKey, wrapped)
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
	err = d.DeleteKey(ctx, ref)
	a.forget(name)
	return a.manageError(peer, "delete", p, name, err)
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
	a.log.Warn("key "+op+" failed", "key", name, "provider", p.Name(), "err", err)
	code := providers.ErrUnavailable
	for _, s := range []error{providers.ErrKeyExists, providers.ErrKeyNotFound, providers.ErrInvalidArgument, providers.ErrNotSupported, providers.ErrClosed} {
		if errors.Is(err, s) {
			code = s
			break
		}
	}
	if pe, ok := errors.AsType[*providers.PublicError](err); ok {
		return pe
	}
	return providers.Publicf(code, "%s key %q in provider %q: %s", op, name, p.Name(), code)
}

// Providers lists the agent's providers in lookup order.
func (a *Agent) Providers() []providers.Provider { return a.providers }

// Health checks a provider: its own check if it has one, else listing its
// keys. It gives up after five seconds.
func (a *Agent) Health(ctx context.Context, p providers.Provider) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if h, ok := p.(providers.HealthChecker); ok {
		return h.Health(ctx)
	}
	_, err := p.Keys(ctx)
	return err
}

// healthMessage says what failing means for each kind of provider,
// without the device's own error text, which goes to the log.
func healthMessage(p providers.Provider) string {
	switch p.Kind() {
	case "pkcs11":
		return "the token is missing or not logged in"
	case "tpm":
		return "the TPM does not answer"
	case "software":
		return "the keystore directory is missing or not private"
	}
	return "unavailable"
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
		sp := status.Peer{UID: p.UID, GID: p.GID, PID: p.PID, Contexts: s.openContexts()}
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

// openContexts counts the session's open contexts.
func (s *Session) openContexts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.contexts)
}

// Status reports the agent's state. Any connected peer may ask.
func (a *Agent) Status(ctx context.Context) Status {
	st := Status{
		Version:     a.version,
		Started:     a.started.UTC().Truncate(time.Second),
		Uptime:      time.Since(a.started).Seconds(),
		PID:         os.Getpid(),
		Connections: a.sessions.Load(),
		Contexts:    a.contexts.Load(),
	}
	for _, p := range a.providers {
		ps := ProviderStatus{Name: p.Name(), Kind: p.Kind(), Healthy: true}
		if err := a.Health(ctx, p); err != nil {
			ps.Healthy = false
			ps.Error = healthMessage(p)
			a.log.Warn("provider unhealthy", "provider", p.Name(), "err", err)
		}
		infos, err := p.Keys(ctx)
		if err != nil && ps.Healthy {
			ps.Healthy = false
			ps.Error = "cannot list keys"
			a.log.Warn("provider unhealthy", "provider", p.Name(), "err", err)
		}
		ps.Keys = len(infos)
		st.Keys += len(infos)
		st.Providers = append(st.Providers, ps)
	}
	return st
}
