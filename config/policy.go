package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/socket"
)

// Policies is a key's policy: one [key.policy] table, or several
// [[key.policy]] tables of which any may allow a caller.
type Policies []Policy

// UnmarshalTOML takes either form. Each table is decoded on its own so
// that an unknown field in it is reported, as elsewhere in the file.
func (ps *Policies) UnmarshalTOML(v any) error {
	var tables []map[string]any
	switch x := v.(type) {
	case map[string]any:
		tables = []map[string]any{x}
	case []map[string]any:
		tables = x
	case []any:
		for _, t := range x {
			m, ok := t.(map[string]any)
			if !ok {
				return errors.New("policy: want a table or an array of tables")
			}
			tables = append(tables, m)
		}
	default:
		return errors.New("policy: want a table or an array of tables")
	}
	out := make(Policies, len(tables))
	for i, t := range tables {
		var text strings.Builder
		if err := toml.NewEncoder(&text).Encode(t); err != nil {
			return fmt.Errorf("policy[%d]: %w", i, err)
		}
		md, err := toml.Decode(text.String(), &out[i])
		if err != nil {
			return fmt.Errorf("policy[%d]: %w", i, err)
		}
		for _, k := range md.Undecoded() {
			return fmt.Errorf("policy[%d].%s: unknown field", i, k)
		}
	}
	*ps = out
	return nil
}

// Empty reports whether no policy is given: the key gets the default one.
func (ps Policies) Empty() bool {
	return len(ps) == 0 || len(ps) == 1 && ps[0].Empty()
}

// Resolve turns the tables into one agent policy: the first table's rule,
// with the others as alternatives. Errors name the table when there are
// several.
func (ps Policies) Resolve() (agent.Policy, error) {
	if len(ps) == 0 {
		return agent.Policy{}, nil
	}
	if len(ps) == 1 {
		return ps[0].Resolve()
	}
	var out agent.Policy
	var errs []error
	for i, p := range ps {
		rule, err := p.Resolve()
		if err == nil && !p.namesCaller() {
			err = errNamesNoCaller
		}
		if err != nil {
			for _, e := range flatten(err) {
				errs = append(errs, fmt.Errorf("[%d]: %w", i, e))
			}
			continue
		}
		if i == 0 {
			out = rule
		} else {
			out.Alternatives = append(out.Alternatives, rule)
		}
	}
	return out, errors.Join(errs...)
}

// errNamesNoCaller is a policy that could allow nobody.
var errNamesNoCaller = errors.New("names no caller (users, groups, units, cgroups or executables): nobody, not even the agent's own user, could use the key; name a caller, or leave the policy out")

// namesCaller reports whether the policy names anyone it could allow.
func (p *Policy) namesCaller() bool {
	return len(p.Users) > 0 || len(p.Groups) > 0 || p.namesProcess()
}

// namesProcess reports whether the policy has conditions on the caller's
// process.
func (p *Policy) namesProcess() bool {
	return len(p.Units) > 0 || len(p.Cgroups) > 0 || len(p.Executables) > 0
}

// resolveProcess checks the conditions on the caller's process and adds
// them to out, returning one error per broken entry. A condition this
// system cannot judge is an error, not a rule that silently denies.
func (p *Policy) resolveProcess(out *agent.Policy) []error {
	var errs []error
	for _, u := range p.Units {
		if !socket.ValidUnitName(u) {
			errs = append(errs, fmt.Errorf("units: %q is not a systemd service or scope name (like \"webhook.service\")", u))
			continue
		}
		out.Units = append(out.Units, u)
	}
	for _, c := range p.Cgroups {
		switch {
		case !strings.HasPrefix(c, "/") || filepath.Clean(c) != c:
			errs = append(errs, fmt.Errorf("cgroups: %q must be a clean absolute cgroup path (like \"/system.slice/webhook.service\")", c))
		case c == "/":
			errs = append(errs, fmt.Errorf("cgroups: \"/\" would match every process"))
		default:
			out.Cgroups = append(out.Cgroups, c)
		}
	}
	for _, e := range p.Executables {
		x, err := parseExecutable(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("executables: %w", err))
			continue
		}
		out.Executables = append(out.Executables, x)
	}
	if err := socket.CheckIdentitySupport(len(p.Units) > 0 || len(p.Cgroups) > 0, len(p.Executables) > 0); err != nil {
		errs = append(errs, fmt.Errorf("units, cgroups and executables cannot be judged here: %w", err))
	}
	return errs
}

// parseExecutable reads "PATH" or "PATH sha256:HEX".
func parseExecutable(s string) (agent.Executable, error) {
	path, digest := s, ""
	if i := strings.LastIndex(s, " sha256:"); i >= 0 {
		path, digest = s[:i], s[i+len(" sha256:"):]
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return agent.Executable{}, fmt.Errorf("%q must start with a clean absolute path", s)
	}
	// The kernel shows a process's binary by its resolved path, so a
	// symlink's name would never match.
	if real, err := filepath.EvalSymlinks(path); err == nil && real != path {
		return agent.Executable{}, fmt.Errorf("%q is a symbolic link to %q; name the binary itself", path, real)
	}
	x := agent.Executable{Path: path}
	if digest != "" || strings.HasSuffix(s, " sha256:") {
		sum, err := hex.DecodeString(digest)
		if err != nil || len(sum) != 32 {
			return agent.Executable{}, fmt.Errorf("%q: the digest must be sha256: and 64 hex digits", s)
		}
		x.SHA256 = sum
	}
	return x, nil
}

// flatten lists the errors inside joined ones, so each can be reported on
// its own line with its field.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}
