package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/config"
	"github.com/hmac-agent/hmac-agent/internal/harden"
	"github.com/hmac-agent/hmac-agent/internal/memreturn"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
	"github.com/hmac-agent/hmac-agent/internal/threadprio"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket"
)

// closeWait bounds how long a stopping agent waits for its providers to
// close. A device call that never returns (a hung HSM) keeps a PKCS#11
// module from being finalized, and must not keep the process alive after
// it said it stopped.
const closeWait = 3 * time.Second

// closeAgent closes a's providers, waiting for them at most closeWait.
func closeAgent(a *agent.Agent, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		a.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(closeWait):
		log.Warn("a device call is still running: exiting without closing its provider", "waited", closeWait)
	}
}

// defaultShutdownGrace is how long a stopping agent waits for requests in
// flight.
const defaultShutdownGrace = 10 * time.Second

func newServeCommand() *cobra.Command {
	var configPath, socketPath, logLevel, logFormat string
	cmd := &cobra.Command{
		Use:   "serve [--config FILE] [--socket PATH]",
		Short: "Run the agent",
		Long: `Run the agent in the foreground until SIGINT or SIGTERM.

With no --config, the agent keeps a software keystore in
$XDG_STATE_HOME/hmac-agent/keys (else ~/.local/state/hmac-agent/keys) and
listens on $XDG_RUNTIME_DIR/hmac-agent/agent.sock (else
/tmp/hmac-agent-$UID/agent.sock). Point clients at it with HMAC_AGENT_SOCK.`,
		Example: `  hmac-agent serve
  hmac-agent serve --config /etc/hmac-agent/agent.toml
  HMAC_AGENT_SOCK=/tmp/ha/agent.sock hmac-agent serve --socket /tmp/ha/agent.sock`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVar(&configPath, "config", "", "the configuration file (TOML)")
	cmd.Flags().StringVar(&socketPath, "socket", "", "listen here instead of the configured or default path")
	cmd.Flags().StringVar(&logLevel, "log-level", "", "debug, info, warn or error (default info)")
	cmd.Flags().StringVar(&logFormat, "log-format", "", "text or json (default text)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var cfg *config.Config
		var err error
		if configPath != "" {
			cfg, err = config.Load(configPath)
		} else {
			cfg, err = config.Default()
		}
		if err != nil {
			return err
		}
		if socketPath != "" {
			cfg.Socket = socketPath
		}
		if logLevel != "" {
			cfg.Log.Level = logLevel
		}
		if logFormat != "" {
			cfg.Log.Format = logFormat
		}
		if err := cfg.Validate(); err != nil {
			return usageError("%v", err)
		}
		return serve(cmd.Context(), cfg, configPath)
	}
	return cmd
}

func newLogger(cfg config.Log) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.Level)) // validated; empty is info
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func serve(ctx context.Context, cfg *config.Config, configPath string) error {
	log := newLogger(cfg.Log)
	if err := harden.NoDump(); err != nil {
		log.Warn("cannot make the process non-dumpable", "err", err)
	}
	// Tried now, at start: a system call filter that kills the process
	// for setpriority shows at once, not under the first flood.
	if !cfg.FloodPriority() {
		threadprio.Disable()
	} else if !threadprio.Available() {
		log.Info("floods run at the normal kernel priority: this process may not set a thread's nice value back (CAP_SYS_NICE, or LimitNICE=+0 in the unit)")
	}
	audit, closeAudit, err := openAudit(cfg.Audit)
	if err != nil {
		return err
	}
	defer closeAudit()
	var m *metrics.Metrics
	if cfg.Metrics != "" {
		m = metrics.New()
	}
	a, err := buildAgent(ctx, cfg, log, audit, m)
	if err != nil {
		return err
	}
	defer closeAgent(a, log)

	sl := socket.Limits{
		MaxFrame:             cfg.Limits.MaxFrame,
		MaxInFlight:          cfg.Limits.MaxInFlight,
		MaxQueuedBytes:       cfg.Limits.MaxQueuedBytes,
		MaxConnections:       cfg.Limits.MaxConnections,
		MaxConnectionsPerUID: cfg.Limits.MaxConnectionsPerUID,
		HelloTimeout:         cfg.Limits.HelloTimeout.Duration,
		IdleTimeout:          cfg.Limits.IdleConnectionTimeout.Duration,
		ReplyTimeout:         cfg.Limits.ReplyTimeout.Duration,
		HashTimeout:          cfg.Limits.HashTimeout.Duration,
	}
	setMemoryLimit(a.Limits(), sl, len(a.Providers()), log)
	memreturn.TightenDuringBursts()

	// Caught before the socket exists: a client that sees the socket
	// and signals at once must find the agent removing it, not killed
	// by the signal's default action with the socket left behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	listeners, where, err := listen(cfg, log)
	if err != nil {
		return err
	}
	srv := socket.NewServer(a, sl, log)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { served <- srv.Serve(ctx, l) }()
	}
	if m != nil {
		m.Watch(a, srv)
		stopMetrics, err := serveMetrics(cfg, m, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	st := a.Status(ctx)
	log.Info("hmac-agent listening", "socket", where, "version", versionString(), "keys", st.Keys, "providers", len(st.Providers))
	daemon.SdNotify(false, daemon.SdNotifyReady)

	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				daemon.SdNotify(false, daemon.SdNotifyReloading)
				cfg = reload(a, cfg, configPath, log)
				daemon.SdNotify(false, daemon.SdNotifyReady)
				continue
			}
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			grace := cfg.ShutdownGrace.Duration
			if grace <= 0 {
				grace = defaultShutdownGrace
			}
			log.Info("stopping: requests in flight may finish", "signal", sig.String(), "grace", grace)
			sctx, scancel := context.WithTimeout(context.Background(), grace)
			defer scancel()
			if err := srv.Shutdown(sctx); err != nil {
				log.Warn("requests still running at the deadline were cut", "err", err)
			}
			for range listeners {
				<-served
			}
			log.Info("stopped")
			return nil
		case err := <-served:
			return fmt.Errorf("serving %s: %w", where, err)
		}
	}
}

// listen takes the sockets systemd passes (socket activation), or makes
// the configured one.
func listen(cfg *config.Config, log *slog.Logger) ([]net.Listener, string, error) {
	passed, err := activation.Listeners()
	if err != nil {
		return nil, "", fmt.Errorf("socket activation: %w", err)
	}
	var ls []net.Listener
	for i, l := range passed {
		if l == nil {
			continue
		}
		// Only a Unix socket gives each caller's credentials, which every
		// policy and the audit log rest on. A unit's ListenStream=PORT
		// would hand the agent a socket the network can reach.
		if _, ok := l.(*net.UnixListener); !ok {
			for _, l := range passed {
				if l != nil {
					l.Close()
				}
			}
			return nil, "", fmt.Errorf("socket activation: socket %d (%s %s) is not a Unix socket: the agent serves only Unix stream sockets (ListenStream=/path)", i, l.Addr().Network(), l.Addr())
		}
		ls = append(ls, l)
	}
	if len(ls) > 0 {
		log.Info("using sockets passed by systemd", "count", len(ls))
		return ls, ls[0].Addr().String(), nil
	}
	gid := -1
	if cfg.SocketGroup != "" {
		gid, _ = config.LookupGroup(cfg.SocketGroup) // validated
	}
	path := cfg.SocketPath()
	l, err := socket.Listen(path, gid)
	if err != nil {
		return nil, "", err
	}
	return []net.Listener{l}, path, nil
}

// openAudit opens the audit log: JSON lines on stderr, in a file (0600,
// appended to), or nowhere. A link in the file's place is refused: a root
// agent must not be made to append to a file someone else chose.
func openAudit(cfg config.Audit) (*slog.Logger, func(), error) {
	switch cfg.Destination {
	case "off":
		return nil, func() {}, nil
	case "", "stderr":
		return slog.New(slog.NewJSONHandler(os.Stderr, nil)), func() {}, nil
	}
	// O_NONBLOCK: a FIFO in the file's place would otherwise hold the
	// open until someone reads it; checkAudit then refuses it.
	f, err := os.OpenFile(cfg.Destination, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	switch {
	case errors.Is(err, syscall.ELOOP):
		return nil, nil, fmt.Errorf("audit log: %s is a symbolic link: the agent does not follow links for its files", cfg.Destination)
	case errors.Is(err, syscall.ENXIO): // a FIFO nobody reads
		return nil, nil, fmt.Errorf("audit log: %s is not a regular file", cfg.Destination)
	case err != nil:
		return nil, nil, fmt.Errorf("audit log: %w", err)
	}
	if err := checkAudit(f); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("audit log: %w", err)
	}
	return slog.New(slog.NewJSONHandler(f, nil)), func() { f.Close() }, nil
}

// checkAudit refuses an audit log file, checked on the open descriptor,
// that is not a regular file, that a user other than the agent's (or
// root) owns, or that group or others may write: whoever could write it
// could forge or erase its lines, and a file someone else made first
// where the log goes is theirs to read.
func checkAudit(f *os.File) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	switch perm := st.Mode & 0o777; {
	case st.Mode&syscall.S_IFMT != syscall.S_IFREG:
		return fmt.Errorf("%s is not a regular file", f.Name())
	case int(st.Uid) != os.Geteuid() && st.Uid != 0:
		return fmt.Errorf("%s is owned by uid %d: the audit log must be the agent's user's (uid %d) or root's", f.Name(), st.Uid, os.Geteuid())
	case perm&0o022 != 0:
		return fmt.Errorf("%s has mode %04o: others must not be able to write it (chmod go-w %s)", f.Name(), perm, f.Name())
	}
	return nil
}

// buildAgent opens every configured provider and the agent over them.
func buildAgent(ctx context.Context, cfg *config.Config, log, audit *slog.Logger, m *metrics.Metrics) (*agent.Agent, error) {
	var opened []providers.Provider
	closeAll := func() {
		for _, p := range opened {
			p.Close()
		}
	}
	for _, pc := range cfg.Providers {
		p, err := pc.Open(ctx, log)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("provider %q: %w", pc.Name, err)
		}
		opened = append(opened, p)
	}
	keys, def := agentKeys(cfg)
	opts := agent.Options{
		Providers:     opened,
		Keys:          keys,
		DefaultPolicy: def,
		Limits: agent.Limits{
			MaxContextsPerSession: cfg.Limits.MaxContextsPerConnection,
			MaxContexts:           cfg.Limits.MaxContexts,
			MaxContextsPerUID:     cfg.Limits.MaxContextsPerUID,
			MaxBytesPerUID:        cfg.Limits.MaxBytesPerUID,
			MaxBytes:              cfg.Limits.MaxBytes,
			IdleContextTimeout:    cfg.Limits.IdleContextTimeout.Duration,
		},
		Logger:  log,
		Audit:   audit,
		Version: versionString(),

		VersionRefresh: cfg.VersionRefresh.Duration,
	}
	if m != nil {
		opts.Observe = m.Observe
	}
	a, err := agent.New(opts)
	if err != nil {
		closeAll()
		return nil, err
	}
	return a, nil
}

// agentKeys turns the config's keys and default policy into the agent's
// terms; the config was validated, so names resolve.
//
// A key without a policy of its own gets the default policy: only the
// agent's own user, unless [default_policy] says otherwise.
func agentKeys(cfg *config.Config) ([]agent.KeyConfig, *agent.Policy) {
	var def *agent.Policy
	fallback := agent.OwnerPolicy(uint32(os.Geteuid()))
	if cfg.DefaultPolicy != nil {
		pol, _ := cfg.DefaultPolicy.Resolve()
		def, fallback = &pol, pol
	}
	var keys []agent.KeyConfig
	for _, k := range cfg.Keys {
		pol := fallback
		if !k.Policy.Empty() {
			pol, _ = k.Policy.Resolve()
		}
		ref := k.Object
		if k.URI != "" {
			ref = k.URI
		}
		keys = append(keys, agent.KeyConfig{
			Name: k.Name, Provider: k.Provider, Ref: ref, Policy: pol,
			VerifyGrace: k.VerifyGrace.Duration, RotateEvery: k.RotateEvery.Duration,
		})
	}
	return keys, def
}
