package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"log/slog"
	"testing"
	"time"
)

func TestPolicyConditions(t *testing.T) {
	sum := sha256.Sum256([]byte("binary"))
	other := sha256.Sum256([]byte("other binary"))
	webhook := &Identity{Executable: "/usr/bin/webhook", ExecutableSHA256: sum[:], Cgroup: "/system.slice/webhook.service", Unit: "webhook.service"}
	noDigest := &Identity{Executable: "/usr/bin/webhook", Cgroup: "/system.slice/webhook.service", Unit: "webhook.service"}
	peer := func(uid uint32, id *Identity) Peer {
		return Peer{UID: uid, GID: uid, PID: 7, Known: true, Identity: id}
	}
	all := OpMAC | OpVerify
	tests := []struct {
		name   string
		policy Policy
		peer   Peer
		ops    Ops
		want   bool
	}{
		{"uid", Policy{UIDs: []uint32{33}, Ops: all}, peer(33, nil), OpMAC, true},
		{"unknown peer", Policy{UIDs: []uint32{0}, Ops: all}, Peer{}, OpMAC, false},
		{"no condition allows nobody", Policy{Ops: all}, peer(0, webhook), OpMAC, false},
		{"unit", Policy{Units: []string{"webhook.service"}, Ops: all}, peer(1, webhook), OpMAC, true},
		{"unit, identity unread", Policy{Units: []string{"webhook.service"}, Ops: all}, peer(1, nil), OpMAC, false},
		{"unit, none", Policy{Units: []string{"webhook.service"}, Ops: all}, peer(1, &Identity{Cgroup: "/"}), OpMAC, false},
		{"unit and uid, wrong uid", Policy{UIDs: []uint32{33}, Units: []string{"webhook.service"}, Ops: all}, peer(1, webhook), OpMAC, false},
		{"unit and uid", Policy{UIDs: []uint32{33}, Units: []string{"webhook.service"}, Ops: all}, peer(33, webhook), OpMAC, true},
		{"unit, wrong op", Policy{Units: []string{"webhook.service"}, Ops: OpVerify}, peer(1, webhook), OpMAC, false},
		{"cgroup prefix", Policy{Cgroups: []string{"/system.slice"}, Ops: all}, peer(1, webhook), OpMAC, true},
		{"cgroup exact", Policy{Cgroups: []string{"/system.slice/webhook.service"}, Ops: all}, peer(1, webhook), OpMAC, true},
		{"cgroup not a component prefix", Policy{Cgroups: []string{"/system.slice/webhook"}, Ops: all}, peer(1, webhook), OpMAC, false},
		{"cgroup unknown", Policy{Cgroups: []string{"/system.slice"}, Ops: all}, peer(1, &Identity{}), OpMAC, false},
		{"exe path", Policy{Executables: []Executable{{Path: "/usr/bin/webhook"}}, Ops: all}, peer(1, webhook), OpMAC, true},
		{"exe other path", Policy{Executables: []Executable{{Path: "/usr/bin/api"}}, Ops: all}, peer(1, webhook), OpMAC, false},
		{"exe digest", Policy{Executables: []Executable{{Path: "/usr/bin/webhook", SHA256: sum[:]}}, Ops: all}, peer(1, webhook), OpMAC, true},
		{"exe wrong digest", Policy{Executables: []Executable{{Path: "/usr/bin/webhook", SHA256: other[:]}}, Ops: all}, peer(1, webhook), OpMAC, false},
		{"exe digest unread", Policy{Executables: []Executable{{Path: "/usr/bin/webhook", SHA256: sum[:]}}, Ops: all}, peer(1, noDigest), OpMAC, false},
		{"every condition", Policy{Units: []string{"webhook.service"}, Cgroups: []string{"/system.slice"}, Executables: []Executable{{Path: "/usr/bin/api"}}, Ops: all}, peer(1, webhook), OpMAC, false},
		{"alternative", Policy{UIDs: []uint32{99}, Ops: all, Alternatives: []Policy{{Units: []string{"webhook.service"}, Ops: OpVerify}}}, peer(1, webhook), OpVerify, true},
		{"alternative, its op only", Policy{UIDs: []uint32{99}, Ops: all, Alternatives: []Policy{{Units: []string{"webhook.service"}, Ops: OpVerify}}}, peer(1, webhook), OpMAC, false},
		{"alternative, unknown peer", Policy{Alternatives: []Policy{{UIDs: []uint32{0}, Ops: all}}}, Peer{}, OpMAC, false},
	}
	for _, tt := range tests {
		if got := tt.policy.allows(tt.peer, tt.ops); got != tt.want {
			t.Errorf("%s: allows = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestIdentityNeed(t *testing.T) {
	for _, tt := range []struct {
		p    Policy
		want IdentityNeed
	}{
		{OwnerPolicy(0), NeedNone},
		{Policy{Units: []string{"a.service"}}, NeedIdentity},
		{Policy{Executables: []Executable{{Path: "/x"}}}, NeedIdentity},
		{Policy{UIDs: []uint32{1}, Alternatives: []Policy{{Executables: []Executable{{Path: "/x", SHA256: make([]byte, 32)}}}}}, NeedDigest},
	} {
		if got := tt.p.IdentityNeed(); got != tt.want {
			t.Errorf("%+v: need %v, want %v", tt.p, got, tt.want)
		}
	}
}

// The audit log names the caller's unit (or cgroup) and executable, and
// says "unknown" when they were not read.
func TestAuditIdentity(t *testing.T) {
	var buf bytes.Buffer
	a := &Agent{audit: slog.New(slog.NewJSONHandler(&buf, nil))}
	a.auditUse(Peer{UID: 1, Known: true, Identity: &Identity{Unit: "webhook.service", Cgroup: "/system.slice/webhook.service", Executable: "/usr/bin/webhook"}}, "mac", "k", 0, nil, 0, time.Time{})
	a.auditUse(Peer{UID: 1, Known: true, Identity: &Identity{Cgroup: "/custom/place", Container: "c0ffee"}}, "mac", "k", 0, nil, 0, time.Time{})
	a.auditUse(Peer{UID: 1, Known: true}, "mac", "k", 0, nil, 0, time.Time{})
	want := []map[string]string{
		{"unit": "webhook.service", "exe": "/usr/bin/webhook"},
		{"cgroup": "/custom/place", "container": "c0ffee", "exe": "unknown"},
		{"unit": "unknown", "exe": "unknown"},
	}
	dec := json.NewDecoder(&buf)
	for i, w := range want {
		var line map[string]any
		if err := dec.Decode(&line); err != nil {
			t.Fatal(err)
		}
		for k, v := range w {
			if line[k] != v {
				t.Errorf("line %d: %s = %v, want %q (%v)", i, k, line[k], v, line)
			}
		}
	}
}
