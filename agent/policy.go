package agent

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
)

// Peer is who is on the other end of a connection: its credentials from
// SO_PEERCRED and, when the agent reads it, what the kernel vouches for
// about its process.
type Peer struct {
	UID, GID uint32
	PID      int32
	// Known is false when the transport gave no credentials; such a peer
	// is allowed nothing.
	Known bool
	// Identity is the peer's process as read at connect time, pinned by
	// a pidfd; nil when it was not read (no policy or audit log asks for
	// it, or the platform cannot pin the process). It is never changed
	// after the connection starts.
	Identity *Identity
}

// Identity is what the kernel says about a peer's process at connect
// time. An empty field is unknown: a policy condition on it fails.
type Identity struct {
	// Executable is the absolute path of the binary the process runs,
	// checked to still name that file (same device and inode).
	Executable string
	// ExecutableSHA256 is the SHA-256 of that binary, read through the
	// process's own link to it; nil unless a policy names a digest.
	ExecutableSHA256 []byte
	// DigestRefused says why the binary was not hashed when a policy
	// needed its digest (too large, or its uid had too much hashed
	// lately), or is empty.
	DigestRefused string
	// Cgroup is the process's path in the systemd cgroup hierarchy (the
	// cgroup v2 tree, or the v1 name=systemd one).
	Cgroup string
	// Unit is the systemd unit the cgroup path shows ("webhook.service",
	// "session-4.scope"), or empty.
	Unit string
	// Container is the container id the cgroup path shows, or empty.
	Container string
}

func (p Peer) String() string {
	if !p.Known {
		return "unknown peer"
	}
	s := fmt.Sprintf("uid=%d gid=%d pid=%d", p.UID, p.GID, p.PID)
	if id := p.Identity; id != nil {
		if id.Unit != "" {
			s += " unit=" + id.Unit
		} else if id.Cgroup != "" {
			s += " cgroup=" + id.Cgroup
		}
		if id.Executable != "" {
			s += " exe=" + id.Executable
		}
		if id.DigestRefused != "" {
			s += " (" + id.DigestRefused + ")"
		}
	}
	return s
}

// IdentityNeed says how much of a peer's identity must be read at
// connect time. Each level includes the ones before it.
type IdentityNeed uint8

const (
	// NeedNone reads credentials only.
	NeedNone IdentityNeed = iota
	// NeedIdentity reads the executable's path, the cgroup, unit and
	// container: a few system calls.
	NeedIdentity
	// NeedDigest also hashes the executable (cached per file version).
	NeedDigest
)

// Ops is a set of operations a policy allows.
type Ops uint8

// The operations a key's policy can allow. Opening a context needs either;
// Finalize and MAC need OpMAC, Verify and VerifyMAC need OpVerify, so a
// verify-only caller never sees a tag.
const (
	OpMAC Ops = 1 << iota
	OpVerify
)

// ParseOp parses "mac" or "verify".
func ParseOp(s string) (Ops, error) {
	switch s {
	case "mac":
		return OpMAC, nil
	case "verify":
		return OpVerify, nil
	}
	return 0, fmt.Errorf("unknown operation %q (want \"mac\" or \"verify\")", s)
}

func (o Ops) String() string {
	var names []string
	if o&OpMAC != 0 {
		names = append(names, "mac")
	}
	if o&OpVerify != 0 {
		names = append(names, "verify")
	}
	return strings.Join(names, ",")
}

// Executable names a binary a policy allows: its absolute path and,
// optionally, its SHA-256.
type Executable struct {
	Path   string
	SHA256 []byte // nil: any content
}

func (e Executable) String() string {
	if e.SHA256 == nil {
		return e.Path
	}
	return fmt.Sprintf("%s sha256:%x", e.Path, e.SHA256)
}

// Policy says who may use a key and for what. Its own fields are one
// rule; every condition the rule lists must hold:
//
//   - UIDs, GIDs: the peer's uid is in UIDs or its gid is in GIDs;
//   - Units: the peer's systemd unit is one of them;
//   - Cgroups: the peer's cgroup is one of them or below one;
//   - Executables: the peer runs one of them (and, where a digest is
//     given, a binary with that digest).
//
// A rule that lists no condition allows nobody. Alternatives are further
// rules; a peer is allowed if any rule allows it.
type Policy struct {
	UIDs        []uint32
	GIDs        []uint32
	Units       []string
	Cgroups     []string
	Executables []Executable
	Ops         Ops

	Alternatives []Policy
}

// allows reports whether peer may perform an operation in ops.
func (p *Policy) allows(peer Peer, ops Ops) bool {
	if !peer.Known {
		return false
	}
	if p.ruleAllows(peer, ops) {
		return true
	}
	for i := range p.Alternatives {
		if p.Alternatives[i].allows(peer, ops) {
			return true
		}
	}
	return false
}

// ruleAllows judges p's own rule, not its alternatives.
func (p *Policy) ruleAllows(peer Peer, ops Ops) bool {
	if p.Ops&ops == 0 || !p.namesSomeone() {
		return false
	}
	if (len(p.UIDs) > 0 || len(p.GIDs) > 0) && !slices.Contains(p.UIDs, peer.UID) && !slices.Contains(p.GIDs, peer.GID) {
		return false
	}
	if len(p.Units) == 0 && len(p.Cgroups) == 0 && len(p.Executables) == 0 {
		return true
	}
	id := peer.Identity
	if id == nil {
		return false // unknown identity fails every condition on it
	}
	if len(p.Units) > 0 && (id.Unit == "" || !slices.Contains(p.Units, id.Unit)) {
		return false
	}
	if len(p.Cgroups) > 0 && !slices.ContainsFunc(p.Cgroups, func(c string) bool { return cgroupWithin(id.Cgroup, c) }) {
		return false
	}
	if len(p.Executables) > 0 && !slices.ContainsFunc(p.Executables, func(e Executable) bool { return e.matches(id) }) {
		return false
	}
	return true
}

// namesSomeone reports whether the rule lists any condition at all.
func (p *Policy) namesSomeone() bool {
	return len(p.UIDs) > 0 || len(p.GIDs) > 0 || len(p.Units) > 0 || len(p.Cgroups) > 0 || len(p.Executables) > 0
}

// cgroupWithin reports whether cgroup is prefix or below it, component by
// component: "/a/b" is within "/a" but "/ab" is not.
func cgroupWithin(cgroup, prefix string) bool {
	if cgroup == "" || prefix == "" {
		return false
	}
	if cgroup == prefix {
		return true
	}
	return strings.HasPrefix(cgroup, strings.TrimSuffix(prefix, "/")+"/")
}

func (e Executable) matches(id *Identity) bool {
	if id.Executable == "" || id.Executable != e.Path {
		return false
	}
	if e.SHA256 == nil {
		return true
	}
	return bytes.Equal(id.ExecutableSHA256, e.SHA256)
}

// IdentityNeed is how much of a peer's identity the policy's conditions
// read.
func (p *Policy) IdentityNeed() IdentityNeed {
	need := NeedNone
	if len(p.Units) > 0 || len(p.Cgroups) > 0 || len(p.Executables) > 0 {
		need = NeedIdentity
	}
	for _, e := range p.Executables {
		if e.SHA256 != nil {
			need = NeedDigest
		}
	}
	for i := range p.Alternatives {
		need = max(need, p.Alternatives[i].IdentityNeed())
	}
	return need
}

// opsFor returns the operations p allows peer.
func (p *Policy) opsFor(peer Peer) Ops {
	var ops Ops
	for _, op := range []Ops{OpMAC, OpVerify} {
		if p.allows(peer, op) {
			ops |= op
		}
	}
	return ops
}

// OwnerPolicy is the default: only uid may use the key, for both
// operations.
func OwnerPolicy(uid uint32) Policy {
	return Policy{UIDs: []uint32{uid}, Ops: OpMAC | OpVerify}
}

// identityNeeds is what the configured policies and the audit log need to
// know of each peer; it changes on reload.
type identityNeeds struct{ v atomic.Uint32 }

// noteIdentityNeedsLocked records what the given configuration needs.
// The audit log names each caller's unit and executable, so it needs
// identity even where no policy does.
func (a *Agent) noteIdentityNeedsLocked(keys map[string]KeyConfig, def Policy) {
	need := def.IdentityNeed()
	for _, k := range keys {
		need = max(need, k.Policy.IdentityNeed())
	}
	if a.audit != nil {
		need = max(need, NeedIdentity)
	}
	a.needs.v.Store(uint32(need))
}

// IdentityNeed says how much of a new peer's identity a server must read
// at connect time for the current configuration. A connection keeps what
// was read when it started: one opened before a reload that first names a
// digest has none, and its requests under such a rule fail.
func (a *Agent) IdentityNeed() IdentityNeed { return IdentityNeed(a.needs.v.Load()) }
