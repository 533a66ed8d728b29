// Package config reads hmac-agent's configuration file (TOML) into a typed
// struct and validates it, reporting every broken rule at once, each
// naming its field. docs/operations.md (Configuration reference)
// describes every field.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/internal/paths"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/software"
)

// Config is the whole file.
type Config struct {
	// Socket is where the agent listens; empty means the default path.
	Socket string `toml:"socket"`
	// SocketGroup, if set, may use the socket: the directory becomes
	// 0750 and the socket 0660, owned by this group.
	SocketGroup string `toml:"socket_group"`

	Limits        Limits     `toml:"limits"`
	Log           Log        `toml:"log"`
	Audit         Audit      `toml:"audit"`
	DefaultPolicy *Policy    `toml:"default_policy"`
	Providers     []Provider `toml:"-"` // decoded by kind: Load
	Keys          []Key      `toml:"key"`
	ShutdownGrace Duration   `toml:"shutdown_grace"`
	// Metrics is the address of the Prometheus metrics listener: TCP
	// host:port ("127.0.0.1:9464"), which every local user can read, or
	// "unix:/path" for a socket made as the agent's is (MetricsSocket);
	// empty means none.
	Metrics string `toml:"metrics"`
	// VersionRefresh is how often the agent reads each key's versions
	// again from its provider (default 2s), so that a rotation made
	// through another agent sharing the provider is served here.
	VersionRefresh Duration `toml:"version_refresh"`
	// LowerFloodPriority runs the agent's work for a caller that floods
	// it at a lower kernel priority while another uid is connected
	// (internal/threadprio); unset means true. It calls setpriority(2),
	// which a unit's SystemCallFilter must allow (@resources denies it).
	LowerFloodPriority *bool `toml:"lower_flood_priority"`
	meta               toml.MetaData
}

// FloodPriority reports whether lower_flood_priority is on.
func (c *Config) FloodPriority() bool {
	return c.LowerFloodPriority == nil || *c.LowerFloodPriority
}

// MetricsSocket returns the path of the metrics listener's Unix socket
// when metrics is "unix:/path".
func (c *Config) MetricsSocket() (string, bool) {
	return strings.CutPrefix(c.Metrics, "unix:")
}

// Limits are the agent's limits; zero means the default.
type Limits struct {
	MaxFrame                 int `toml:"max_frame"`
	MaxConnections           int `toml:"max_connections"`
	MaxInFlight              int `toml:"max_in_flight"`
	MaxQueuedBytes           int `toml:"max_queued_bytes"`
	MaxContextsPerConnection int `toml:"max_contexts_per_connection"`
	MaxContexts              int `toml:"max_contexts"`
	// Per caller (uid), over all its connections.
	MaxConnectionsPerUID int   `toml:"max_connections_per_uid"`
	MaxContextsPerUID    int   `toml:"max_contexts_per_uid"`
	MaxBytesPerUID       int64 `toml:"max_bytes_per_uid"`
	MaxBytes             int64 `toml:"max_bytes"`
	// IdleContextTimeout frees contexts unused this long ("10m" by
	// default; "-1s" never).
	IdleContextTimeout Duration `toml:"idle_context_timeout"`
	// HelloTimeout closes a connection that has not sent HELLO within it
	// ("5s" by default).
	HelloTimeout Duration `toml:"hello_timeout"`
	// HashTimeout refuses a connection whose executable, where a policy
	// names a digest, has not been hashed within it ("5s" by default; at
	// most MaxHashTimeout).
	HashTimeout Duration `toml:"hash_timeout"`
	// IdleConnectionTimeout closes a connection with no context open
	// and no request for this long ("10m" by default; "-1s" never).
	IdleConnectionTimeout Duration `toml:"idle_connection_timeout"`
	// ReplyTimeout closes a connection whose peer has not taken a reply
	// for this long ("30s" by default; "-1s" never).
	ReplyTimeout Duration `toml:"reply_timeout"`
}

// Audit says where the audit log goes: "stderr" (the default), "off", or
// a file path, appended to.
type Audit struct {
	Destination string `toml:"destination"`
}

// Log configures the agent's log.
type Log struct {
	Level  string `toml:"level"`  // debug, info, warn, error
	Format string `toml:"format"` // text or json
}

// Provider is one place keys live: a [[provider]] table. Name, type and
// timeout are common to every kind; the rest of the table is the kind's
// own Settings, decoded and checked by the kind's package (kinds.go).
type Provider struct {
	Name string
	Type string // a kind of the registry: software, pkcs11, tpm
	// Timeout bounds one call to a device (kinds that take one): past it
	// the request is answered ErrUnavailable (default 5s).
	Timeout Duration
	// Settings are the kind's own fields; nil for a type the registry
	// does not know.
	Settings providers.Settings
	// unknown are the table's fields that neither the common fields nor
	// the kind's settings have.
	unknown []string
	// decodeErr is why the table could not be decoded, if it could not.
	decodeErr error
}

// Key names a key and says who may use it.
type Key struct {
	Name     string `toml:"name"`
	Provider string `toml:"provider"`
	// Object is the key's name inside the provider (default: Name).
	Object string `toml:"object"`
	// URI names the key in the provider's own terms, such as
	// "pkcs11:token=agent;object=webhook". It replaces Object.
	URI string `toml:"uri"`
	// Policy is one [key.policy] table or several [[key.policy]] ones.
	Policy Policies `toml:"policy"`
	// VerifyGrace is how long a version keeps verifying after it stops
	// being current; unset means until it is retired. The agent retires
	// versions past it.
	VerifyGrace Duration `toml:"verify_grace"`
	// RotateEvery has the agent rotate the key when its current version
	// is that old; unset means never.
	RotateEvery Duration `toml:"rotate_every"`
}

// Policy lists who may use a key and for what. Every condition it lists
// must hold (users and groups together are one condition: either).
type Policy struct {
	Users      []any    `toml:"users"`  // names or numeric uids
	Groups     []any    `toml:"groups"` // names or numeric gids
	Operations []string `toml:"operations"`
	// Units, Cgroups and Executables name the caller's process
	// (policy.go).
	Units       []string `toml:"units"`
	Cgroups     []string `toml:"cgroups"`
	Executables []string `toml:"executables"`
}

// Bounds of the version settings. Rotating more often than every minute
// would fill a token with versions; reading versions more often than
// every 100ms would load a shared token for nothing, and less often than
// every minute would leave agents serving a rotation late.
const (
	MinRotateEvery    = time.Minute
	MinVersionRefresh = 100 * time.Millisecond
	MaxVersionRefresh = time.Minute
)

// MaxHashTimeout bounds limits.hash_timeout: past its deadline a read of
// a caller's executable that has not returned gives up its hashing slot,
// so a longer deadline lets a stalled filesystem hold a slot longer.
const MaxHashTimeout = time.Minute

// Duration is a time.Duration written as "30s" in TOML.
type Duration = providers.Duration

// Load reads and validates a config file.
func Load(path string) (*Config, error) {
	var f struct {
		Config
		// Tables are the [[provider]] tables, each decoded by its kind.
		Tables []toml.Primitive `toml:"provider"`
	}
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	defer file.Close()
	if err := checkTrusted(file, path); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	meta, err := toml.NewDecoder(file).Decode(&f)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c := f.Config
	c.meta = meta
	for _, t := range f.Tables {
		c.Providers = append(c.Providers, decodeProvider(meta, t))
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// Default is the configuration of `hmac-agent serve` with no file: a
// software keystore in the user's state directory and the default socket.
func Default() (*Config, error) {
	state, err := paths.DefaultState()
	if err != nil {
		return nil, err
	}
	c := &Config{Providers: []Provider{{Name: "software", Type: "software", Settings: &software.Settings{Path: filepath.Join(state, "keys")}}}}
	return c, c.Validate()
}

// SocketPath is the configured socket or the default.
func (c *Config) SocketPath() string {
	if c.Socket != "" {
		return c.Socket
	}
	return paths.DefaultSocket()
}

// Validate checks every rule and returns all broken ones, joined.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	for _, k := range c.meta.Undecoded() {
		bad(k.String(), "unknown field")
	}
	if c.Socket != "" && !filepath.IsAbs(c.Socket) {
		bad("socket", "must be an absolute path, not %q", c.Socket)
	}
	if len(c.SocketPath()) > 107 {
		bad("socket", "path is %d bytes; a Unix socket path must be under 108", len(c.SocketPath()))
	}
	if path, ok := c.MetricsSocket(); ok {
		switch {
		case !filepath.IsAbs(path):
			bad("metrics", "unix: needs an absolute path, not %q", path)
		case len(path) > 107:
			bad("metrics", "path is %d bytes; a Unix socket path must be under 108", len(path))
		case filepath.Clean(path) == filepath.Clean(c.SocketPath()):
			bad("metrics", "%q is the agent's own socket", path)
		}
	} else if c.Metrics != "" {
		if _, _, err := net.SplitHostPort(c.Metrics); err != nil {
			bad("metrics", "must be host:port or unix:/path, not %q", c.Metrics)
		}
	}
	if c.SocketGroup != "" {
		if _, err := LookupGroup(c.SocketGroup); err != nil {
			bad("socket_group", "%v", err)
		}
	}
	for field, v := range map[string]int{
		"limits.max_frame": c.Limits.MaxFrame, "limits.max_connections": c.Limits.MaxConnections,
		"limits.max_in_flight": c.Limits.MaxInFlight, "limits.max_contexts_per_connection": c.Limits.MaxContextsPerConnection,
		"limits.max_contexts": c.Limits.MaxContexts, "limits.max_queued_bytes": c.Limits.MaxQueuedBytes,
		"limits.max_connections_per_uid": c.Limits.MaxConnectionsPerUID, "limits.max_contexts_per_uid": c.Limits.MaxContextsPerUID,
	} {
		if v < 0 {
			bad(field, "must not be negative")
		}
	}
	if c.Limits.MaxBytesPerUID < 0 {
		bad("limits.max_bytes_per_uid", "must not be negative")
	}
	if c.Limits.MaxBytes < 0 {
		bad("limits.max_bytes", "must not be negative")
	}
	if c.Limits.MaxBytesPerUID != 0 && c.Limits.MaxBytesPerUID < 1<<20 {
		bad("limits.max_bytes_per_uid", "must be at least 1048576 bytes: a caller must be able to hold a frame")
	}
	if c.Limits.HelloTimeout.Duration < 0 {
		bad("limits.hello_timeout", "must not be negative")
	}
	switch d := c.Limits.HashTimeout.Duration; {
	case d < 0:
		bad("limits.hash_timeout", "must not be negative")
	case d > MaxHashTimeout:
		bad("limits.hash_timeout", "must be at most %s: a read that never returns holds one of the agent's two hashing slots that long", MaxHashTimeout)
	}
	if c.Limits.MaxFrame != 0 && (c.Limits.MaxFrame < 4096 || c.Limits.MaxFrame > 16<<20) {
		bad("limits.max_frame", "must be between 4096 and 16777216 bytes")
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, not %q", c.Log.Level)
	}
	if d := c.Audit.Destination; d != "" && d != "stderr" && d != "off" && !filepath.IsAbs(d) {
		bad("audit.destination", "must be stderr, off or an absolute file path, not %q", d)
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		bad("log.format", "must be text or json, not %q", c.Log.Format)
	}
	if c.DefaultPolicy != nil {
		if _, err := c.DefaultPolicy.Resolve(); err != nil {
			bad("default_policy", "%v", err)
		}
	}
	if len(c.Providers) == 0 {
		bad("provider", "at least one provider is required")
	}
	names := map[string]string{}
	for i, p := range c.Providers {
		f := fmt.Sprintf("provider[%d]", i)
		if p.Name == "" {
			bad(f+".name", "required")
		} else if prev, dup := names[p.Name]; dup {
			bad(f+".name", "%q is also the name of %s", p.Name, prev)
		} else {
			names[p.Name] = f
		}
		if p.decodeErr != nil {
			bad(f, "%v", p.decodeErr)
			continue
		}
		kind, known := kinds[p.Type]
		if p.Timeout.Duration < 0 {
			bad(f+".timeout", "must not be negative")
		} else if p.Timeout.Duration != 0 && known && !kind.Timeout {
			bad(f+".timeout", "applies to %s providers only", timeoutKinds())
		} else if p.Timeout.Duration != 0 && p.Timeout.Duration < 10*time.Millisecond {
			bad(f+".timeout", "%s is too short for any device; give 10ms or more", p.Timeout.Duration)
		}
		switch {
		case p.Type == "":
			bad(f+".type", "required: %s", kindNames("or"))
		case !known:
			bad(f+".type", "unknown provider type %q (want %s)", p.Type, kindNames("or"))
		case p.Settings == nil: // a Config built in code rather than loaded
			bad(f, "a %s provider needs its settings", p.Type)
		default:
			for _, field := range p.unknown {
				bad(f+"."+field, "unknown field for a %s provider", p.Type)
			}
			for _, e := range p.Settings.Check() {
				bad(f+"."+e.Field, "%s", e.Msg)
			}
		}
	}
	keys := map[string]bool{}
	for i, k := range c.Keys {
		f := fmt.Sprintf("key[%d]", i)
		if err := providers.CheckKeyName(k.Name); err != nil {
			bad(f+".name", "%v", errors.Unwrap(err))
		} else if keys[k.Name] {
			bad(f+".name", "key %q is configured twice", k.Name)
		}
		keys[k.Name] = true
		if _, ok := names[k.Provider]; !ok {
			bad(f+".provider", "no provider named %q", k.Provider)
		}
		if k.Object != "" && k.URI != "" {
			bad(f+".uri", "give object or uri, not both")
		}
		pinned := false
		if object, version, ok := strings.Cut(k.Object, "@"); ok {
			n, err := strconv.Atoi(version)
			if err != nil || n < 1 || strconv.Itoa(n) != version || providers.CheckKeyName(object) != nil {
				bad(f+".object", "%q: want NAME or NAME@N, N a version from 1", k.Object)
			}
			pinned = true
		}
		if pinned && (k.VerifyGrace.Duration != 0 || k.RotateEvery.Duration != 0) {
			bad(f+".object", "%q names one version; verify_grace and rotate_every belong to the entry naming the key itself", k.Object)
		}
		if _, err := k.Policy.Resolve(); err != nil {
			for _, e := range flatten(err) {
				bad(f+".policy", "%v", e)
			}
		}
		if g := k.VerifyGrace.Duration; g < 0 {
			bad(f+".verify_grace", "must not be negative, not %s", g)
		}
		if r := k.RotateEvery.Duration; r < 0 {
			bad(f+".rotate_every", "must not be negative, not %s", r)
		} else if r != 0 && r < MinRotateEvery {
			bad(f+".rotate_every", "%s is too often; give %s or more", r, MinRotateEvery)
		}
	}
	if r := c.VersionRefresh.Duration; r != 0 && (r < MinVersionRefresh || r > MaxVersionRefresh) {
		bad("version_refresh", "%s is out of range; give %s to %s", r, MinVersionRefresh, MaxVersionRefresh)
	}
	return errors.Join(errs...)
}

// Empty reports whether the policy names nobody and no operation: a key
// with such a policy gets the default one.
func (p *Policy) Empty() bool {
	return len(p.Users) == 0 && len(p.Groups) == 0 && len(p.Operations) == 0 && !p.namesProcess()
}

// Resolve turns names into ids and checks the operations. An empty
// operations list means both.
func (p *Policy) Resolve() (agent.Policy, error) {
	var out agent.Policy
	var errs []error
	for _, u := range p.Users {
		id, err := lookupID(u, func(s string) (string, error) {
			usr, err := user.Lookup(s)
			if err != nil {
				return "", err
			}
			return usr.Uid, nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("users: %w", err))
			continue
		}
		out.UIDs = append(out.UIDs, id)
	}
	for _, g := range p.Groups {
		id, err := lookupID(g, func(s string) (string, error) {
			grp, err := user.LookupGroup(s)
			if err != nil {
				return "", err
			}
			return grp.Gid, nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("groups: %w", err))
			continue
		}
		out.GIDs = append(out.GIDs, id)
	}
	if len(p.Operations) > 0 && !p.namesCaller() {
		// A policy that names nobody denies everyone, the agent's own
		// user included: the key could never be used. That is never what
		// was meant, so it is refused rather than served.
		errs = append(errs, errNamesNoCaller)
	}
	if len(p.Operations) == 0 {
		out.Ops = agent.OpMAC | agent.OpVerify
	}
	for _, o := range p.Operations {
		op, err := agent.ParseOp(o)
		if err != nil {
			errs = append(errs, fmt.Errorf("operations: %w", err))
		}
		out.Ops |= op
	}
	errs = append(errs, p.resolveProcess(&out)...)
	return out, errors.Join(errs...)
}

func lookupID(v any, byName func(string) (string, error)) (uint32, error) {
	switch x := v.(type) {
	case int64:
		if x < 0 || x > 1<<32-1 {
			return 0, fmt.Errorf("id %d out of range", x)
		}
		return uint32(x), nil
	case string:
		if n, err := strconv.ParseUint(x, 10, 32); err == nil {
			return uint32(n), nil
		}
		id, err := byName(x)
		if err != nil {
			return 0, fmt.Errorf("%q: %w", x, err)
		}
		n, err := strconv.ParseUint(id, 10, 32)
		return uint32(n), err
	}
	return 0, fmt.Errorf("%v: want a name or a number", v)
}

// LookupGroup returns the gid of a group name or number.
func LookupGroup(g string) (int, error) {
	id, err := lookupID(g, func(s string) (string, error) {
		grp, err := user.LookupGroup(s)
		if err != nil {
			return "", err
		}
		return grp.Gid, nil
	})
	return int(id), err
}
