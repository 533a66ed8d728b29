package main

import (
	"log/slog"
	"reflect"
	"strings"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/config"
)

// reload reads the config file again and applies its keys and policies.
// A file that does not validate is rejected, with every reason in the
// log, and the running configuration kept; so is one that changes
// providers or the socket, which need a restart.
func reload(a *agent.Agent, old *config.Config, path string, log *slog.Logger) *config.Config {
	if path == "" {
		log.Warn("reload: the agent runs without a config file; nothing to reload")
		return old
	}
	cfg, err := config.Load(path)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			log.Error("reload rejected; keeping the running configuration", "reason", line)
		}
		return old
	}
	if !sameProviders(old, cfg) || old.Socket != cfg.Socket || old.SocketGroup != cfg.SocketGroup {
		log.Error("reload rejected; keeping the running configuration", "reason", "providers and the socket change only at a restart")
		return old
	}
	keys, def := agentKeys(cfg)
	if err := a.Reload(keys, def); err != nil {
		log.Error("reload rejected; keeping the running configuration", "reason", err.Error())
		return old
	}
	added, removed := diffKeys(old, cfg)
	log.Info("reloaded", "config", path, "keys", len(cfg.Keys), "added", added, "removed", removed)
	cfg.Log, cfg.Audit, cfg.Limits, cfg.Metrics = old.Log, old.Audit, old.Limits, old.Metrics // these need a restart too
	return cfg
}

func sameProviders(a, b *config.Config) bool {
	if len(a.Providers) != len(b.Providers) {
		return false
	}
	for i := range a.Providers {
		if !reflect.DeepEqual(a.Providers[i], b.Providers[i]) {
			return false
		}
	}
	return true
}

func diffKeys(old, cur *config.Config) (added, removed []string) {
	had := map[string]bool{}
	for _, k := range old.Keys {
		had[k.Name] = true
	}
	for _, k := range cur.Keys {
		if !had[k.Name] {
			added = append(added, k.Name)
		}
		delete(had, k.Name)
	}
	for name := range had {
		removed = append(removed, name)
	}
	return added, removed
}
