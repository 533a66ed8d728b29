package client_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// policyChild runs the operations of TestPolicyMatrix for one user, in
// the child process running under that user's uid, and prints each
// outcome on a line.
func policyChild() {
	tag, _ := hex.DecodeString(os.Getenv("POLICY_TAG"))
	cases := strings.Split(os.Getenv("POLICY_CASES"), ",")
	for _, outcome := range agenttest.Outcomes(context.Background(), os.Getenv("POLICY_SOCK"), cases, []byte("policy matrix message"), tag) {
		fmt.Println(outcome)
	}
	os.Exit(0)
}

// TestPolicyMatrix runs clients as other users against an agent whose
// socket belongs to a group, across users × keys × operations, and checks
// each is allowed or denied as the policy says. It must run as root, as CI
// does.
func TestPolicyMatrix(t *testing.T) {
	agenttest.RequireRoot(t, "to run clients as other users")
	const sockGroup = 2001
	// Others may pass through dir to the socket's directory and run the
	// copy of the test binary.
	dir, self := agenttest.TestBinaryForOthers(t, "hmac-agent-policy-")

	shared := agent.Policy{UIDs: []uint32{1001}, Ops: agent.OpMAC | agent.OpVerify}
	groupVerify := agent.Policy{GIDs: []uint32{2002}, Ops: agent.OpVerify}
	a := agenttest.Start(t, agenttest.Options{Keys: []agent.KeyConfig{
		{Name: "shared", Provider: "soft", Policy: shared},
		{Name: "group-verify", Provider: "soft", Policy: groupVerify},
	}})
	ctx := context.Background()
	secret := []byte("policy-matrix-secret")
	for _, k := range []string{"owner-only", "shared", "group-verify"} {
		a.Soft.ImportKey(ctx, k, secret)
	}
	tag := hex.EncodeToString(hmacOf(client.SHA256, secret, []byte("policy matrix message")))
	// A second listener on a socket the group may use.
	path := filepath.Join(dir, "run", "agent.sock")
	a.Listen(t, path, sockGroup)
	if fi, _ := os.Stat(filepath.Dir(path)); fi.Mode().Perm() != 0o750 {
		t.Errorf("socket directory mode %v, want 0750 with a group", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660 with a group", fi.Mode().Perm())
	}

	type user struct {
		name     string
		uid, gid uint32
		groups   []uint32
	}
	users := []user{
		{"root (the agent's owner)", 0, 0, nil},
		{"uid 1001 (named by shared)", 1001, 1001, []uint32{sockGroup}},
		{"uid 1002 (group 2002: verify group-verify)", 1002, 2002, []uint32{sockGroup}},
		{"uid 1003 (socket group only)", 1003, 1003, []uint32{sockGroup}},
		{"uid 1004 (not in the socket group)", 1004, 1004, nil},
	}
	ok, denied, noSocket := "ok", "permission_denied", "permission_denied"
	// want[user][key] lists the outcomes of mac, verify_mac, finalize, verify.
	want := map[string]map[string][4]string{
		users[0].name: {"owner-only": {ok, ok, ok, ok}, "shared": {denied, denied, denied, denied}, "group-verify": {denied, denied, denied, denied}},
		users[1].name: {"owner-only": {denied, denied, denied, denied}, "shared": {ok, ok, ok, ok}, "group-verify": {denied, denied, denied, denied}},
		users[2].name: {"owner-only": {denied, denied, denied, denied}, "shared": {denied, denied, denied, denied}, "group-verify": {denied, ok, denied, ok}},
		users[3].name: {"owner-only": {denied, denied, denied, denied}, "shared": {denied, denied, denied, denied}, "group-verify": {denied, denied, denied, denied}},
		users[4].name: {"owner-only": {noSocket, noSocket, noSocket, noSocket}, "shared": {noSocket, noSocket, noSocket, noSocket}, "group-verify": {noSocket, noSocket, noSocket, noSocket}},
	}
	// runAll runs a user's cases in one child process running as the user.
	runAll := func(u user, cases []string) []string {
		cmd := agenttest.ChildCommand(self, &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.groups},
			"HMAC_AGENT_POLICY_CHILD=1", "POLICY_SOCK="+path, "POLICY_CASES="+strings.Join(cases, ","), "POLICY_TAG="+tag)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", u.name, err, out)
		}
		got := strings.Fields(string(out))
		if len(got) != len(cases) {
			t.Fatalf("%s: %d outcomes for %d cases: %s", u.name, len(got), len(cases), out)
		}
		return got
	}
	cases, deniedCount := 0, 0
	for _, u := range users {
		var todo, expect []string
		for _, key := range []string{"owner-only", "shared", "group-verify"} {
			for i, op := range []string{"mac", "verify_mac", "finalize", "verify"} {
				todo = append(todo, key+":"+op)
				expect = append(expect, want[u.name][key][i])
			}
		}
		// Key management is for the agent's owner and root only.
		wantGen, wantDel := denied, denied
		if u.uid == 0 {
			wantGen, wantDel = ok, "key_not_found"
		}
		todo = append(todo, fmt.Sprintf("made-by-%d:generate", u.uid), "no-such-key:delete")
		expect = append(expect, wantGen, wantDel)
		for i, got := range runAll(u, todo) {
			cases++
			if got == denied {
				deniedCount++
			}
			if got != expect[i] {
				t.Errorf("%s: %s = %s, want %s", u.name, todo[i], got, expect[i])
			}
		}
	}
	t.Logf("%d user × key × operation cases, %d denied as the policy says", cases, deniedCount)
}
