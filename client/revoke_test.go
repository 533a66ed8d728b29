package client_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// TestReloadEndsRevokedContexts opens contexts through a real socket,
// reloads the agent's configuration so that the caller loses an
// operation on some of them, and checks that each such context's next
// request, whatever it is (an update's sticky error, copy, finalize,
// verify), is denied, that the agent freed those contexts at the reload,
// and that contexts the reload left alone go on working.
func TestReloadEndsRevokedContexts(t *testing.T) {
	ctx := context.Background()
	me := uint32(os.Geteuid())
	both := agent.OwnerPolicy(me)
	verifyOnly := agent.Policy{UIDs: []uint32{me}, Ops: agent.OpVerify}
	keys := func(narrowed string, removed, repointed bool) []agent.KeyConfig {
		var list []agent.KeyConfig
		for _, name := range []string{"narrow-finalize", "narrow-update", "narrow-copy", "kept"} {
			pol := both
			if name == narrowed || narrowed == "all" && name != "kept" {
				pol = verifyOnly
			}
			list = append(list, agent.KeyConfig{Name: name, Provider: "soft", Ref: "obj-" + name, Policy: pol})
		}
		if !removed {
			list = append(list, agent.KeyConfig{Name: "removed", Provider: "soft", Ref: "obj-removed", Policy: both})
		}
		ref := "obj-repointed"
		if repointed {
			ref = "obj-other"
		}
		return append(list, agent.KeyConfig{Name: "repointed", Provider: "soft", Ref: ref, Policy: both})
	}
	a := agenttest.Start(t, agenttest.Options{Keys: keys("", false, false)})
	secret := []byte("revocation-secret")
	for _, obj := range []string{"narrow-finalize", "narrow-update", "narrow-copy", "kept", "removed", "repointed", "other"} {
		if _, err := a.Soft.ImportKey(ctx, "obj-"+obj, secret); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	open := map[string]*client.HMAC{}
	for _, name := range []string{"narrow-finalize", "narrow-update", "narrow-copy", "kept", "removed", "repointed"} {
		h, err := c.New(ctx, name, client.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		h.Update([]byte("before the reload "))
		open[name] = h
	}
	// A round trip on every context, so that the agent has each one, and
	// no request on one is still running, before the reload: each
	// context's requests run in its own queue, and the reload leaves a
	// context busy with a request to that request. The copies of the
	// revoked contexts are revoked with them.
	for _, h := range open {
		if _, err := h.Copy(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := a.Agent.Status(ctx).Contexts; got != 12 {
		t.Fatalf("%d contexts open before the reload, want 12", got)
	}

	if err := a.Agent.Reload(keys("all", true, true), nil); err != nil {
		t.Fatal(err)
	}
	// The reload freed the revoked contexts at once; what is left is
	// "kept" and its copy.
	if got := a.Agent.Status(ctx).Contexts; got != 2 {
		t.Errorf("%d contexts open after the reload, want the 2 it left alone", got)
	}

	msg := []byte("before the reload after it")
	if _, err := open["narrow-finalize"].Finalize(ctx); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("finalize on a key now verify-only: %v, want permission_denied", err)
	}
	open["narrow-update"].Update([]byte("after it"))
	if err := open["narrow-update"].Verify(ctx, hmacOf(client.SHA256, secret, msg)); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("verify after an update on a revoked context: %v, want permission_denied", err)
	}
	if _, err := open["narrow-copy"].Copy(ctx); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("copy of a revoked context: %v, want permission_denied", err)
	}
	if _, err := open["removed"].Copy(ctx); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("copy on a key removed from the configuration: %v, want permission_denied", err)
	}
	if err := open["repointed"].Verify(ctx, hmacOf(client.SHA256, secret, []byte("before the reload "))); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("verify on a name that now names another key: %v, want permission_denied", err)
	}
	// A denied context is over: the agent does not know it any more.
	if _, err := open["narrow-copy"].Finalize(ctx); err == nil {
		t.Error("a revoked context finalized after its denial")
	}
	open["kept"].Update([]byte("after it"))
	tag, err := open["kept"].Finalize(ctx)
	if err != nil || !bytes.Equal(tag, hmacOf(client.SHA256, secret, msg)) {
		t.Errorf("a context the reload left alone: %x, %v", tag, err)
	}
	if got := a.Agent.Status(ctx).Contexts; got != 1 {
		t.Errorf("%d contexts open at the end, want 1 (kept's copy)", got)
	}
}
