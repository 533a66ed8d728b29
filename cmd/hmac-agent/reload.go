package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/config"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
	"github.com/hmac-agent/hmac-agent/socket"
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

// serveMetrics serves /metrics at cfg.Metrics until stopped. A TCP
// listener shows key names and use counts to every local user; a Unix
// socket ("unix:/path") is made as the agent's own is (socket.Listen: a
// private directory that is never a link, the socket 0600, or 0750 and
// 0660 for socket_group), so that only those who may talk to the agent
// read what it is asked.
func serveMetrics(cfg *config.Config, m *metrics.Metrics, log *slog.Logger) (func(), error) {
	var l net.Listener
	if path, ok := cfg.MetricsSocket(); ok {
		gid := -1
		if cfg.SocketGroup != "" {
			gid, _ = config.LookupGroup(cfg.SocketGroup) // validated
		}
		ul, err := socket.Listen(path, gid)
		if err != nil {
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
		l = ul
	} else {
		tl, err := net.Listen("tcp", cfg.Metrics)
		if err != nil {
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
		l = tl
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(l)
	log.Info("metrics listening", "address", l.Addr().String())
	return func() { hs.Close() }, nil
}
