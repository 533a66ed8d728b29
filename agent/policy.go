package agent

import (
	"fmt"
	"slices"
	"strings"
)

// Peer is who is on the other end of a connection, from SO_PEERCRED.
type Peer struct {
	UID, GID uint32
	PID      int32
	// Known is false when the transport gave no credentials; such a peer
	// is allowed nothing.
	Known bool
}

func (p Peer) String() string {
	if !p.Known {
		return "unknown peer"
	}
	return fmt.Sprintf("uid=%d gid=%d pid=%d", p.UID, p.GID, p.PID)
}

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

// Policy says who may use a key and for what. A peer is allowed if its uid
// is in UIDs or its gid is in GIDs.
type Policy struct {
	UIDs []uint32
	GIDs []uint32
	Ops  Ops
}

// allows reports whether peer may perform an operation in ops.
func (p *Policy) allows(peer Peer, ops Ops) bool {
	if !peer.Known || p.Ops&ops == 0 {
		return false
	}
	return slices.Contains(p.UIDs, peer.UID) || slices.Contains(p.GIDs, peer.GID)
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
