package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/p11kit"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

// fleetAgent is a `hmac-agent serve` process whose PKCS#11 provider is a
// token served by `p11-kit server`, reached through p11-kit-client.so as
// an agent on another host would reach a network HSM.
type fleetAgent struct {
	c *client.Client
}

// startFleetAgent runs hmac-agent serve with a config naming the token
// through srv; refresh is its version_refresh, 0 for the default.
func startFleetAgent(t *testing.T, dir string, srv *p11kit.Server, tok *softhsm.Token, refresh time.Duration) *fleetAgent {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	refreshLine := ""
	if refresh != 0 {
		refreshLine = fmt.Sprintf("version_refresh = %q\n", refresh)
	}
	conf := filepath.Join(dir, "agent.toml")
	writeFile(t, conf, refreshLine+pkcs11Config(t, dir, srv.Module, tok), 0o600)
	served := startAgent(t, []string{srv.Env()}, "--config", conf, "--socket", sock)
	return &fleetAgent{c: served.mustDial(t, sock)}
}

// waitSeen calls check until it returns nil, and returns how long that
// took. A bound far past the refresh interval only keeps a broken agent
// from hanging the test; the time taken is logged, not asserted.
func waitSeen(t *testing.T, refresh time.Duration, what string, check func() error) time.Duration {
	t.Helper()
	start := time.Now()
	limit := 5*refresh + 10*time.Second
	for {
		err := check()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%s: not seen %s after the change (refresh %s): %v", what, limit, refresh, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTwoAgentsShareVersions runs two agents on two sockets, both using
// one SoftHSM2 token served by `p11-kit server`: a rotation through one
// is served by the other within its version refresh, which still
// verifies the older version's tags; a retirement through one stops the
// other verifying that version; and a rotation through the second is
// seen by the first. With version_refresh 500ms and with the default.
func TestTwoAgentsShareVersions(t *testing.T) {
	tok := softhsm.Require(t, "fleet")
	srv := p11kit.Require(t, softhsm.Module, "pkcs11:token="+tok.Label)
	dir := agenttest.SocketDir(t)
	for _, refresh := range []time.Duration{500 * time.Millisecond, 0} {
		name := "refresh=" + refresh.String()
		effective := refresh
		if refresh == 0 {
			name, effective = "refresh=default", agent.DefaultVersionRefresh
		}
		t.Run(name, func(t *testing.T) {
			sub := filepath.Join(dir, fmt.Sprintf("r%d", refresh.Milliseconds()))
			one := startFleetAgent(t, filepath.Join(sub, "one"), srv, tok, refresh)
			two := startFleetAgent(t, filepath.Join(sub, "two"), srv, tok, refresh)
			shareVersions(t, one, two, "hook-"+fmt.Sprint(refresh.Milliseconds()), effective)
		})
	}
}

func shareVersions(t *testing.T, one, two *fleetAgent, key string, refresh time.Duration) {
	ctx := context.Background()
	msg := []byte("payload")
	if _, err := one.c.ImportKey(ctx, "hsm", key, []byte("version one")); err != nil {
		t.Fatal(err)
	}
	var tag1 []byte
	waitSeen(t, refresh, "the imported key through the second agent", func() error {
		tag, v, err := two.c.MACVersion(ctx, key, client.SHA256, msg)
		if err == nil && v != 1 {
			return fmt.Errorf("version %d", v)
		}
		tag1 = tag
		return err
	})
	if want, _, _ := one.c.MACVersion(ctx, key, client.SHA256, msg); !bytes.Equal(tag1, want) {
		t.Fatalf("version 1 differs between the agents: %x and %x", tag1, want)
	}

	info, err := one.c.RotateKey(ctx, "", key, []byte("version two"), 0)
	if err != nil || info.Version != 2 {
		t.Fatalf("rotate through the first agent: %+v, %v", info, err)
	}
	rotated := time.Now()
	tag2, v, err := one.c.MACVersion(ctx, key, client.SHA256, msg)
	if err != nil || v != 2 {
		t.Fatalf("the rotating agent after the rotation: version %d, %v", v, err)
	}
	var seen []byte
	took := waitSeen(t, refresh, "version 2 through the second agent", func() error {
		tag, v, err := two.c.MACVersion(ctx, key, client.SHA256, msg)
		if err != nil {
			return err
		}
		if v != 2 {
			return fmt.Errorf("still version %d", v)
		}
		seen = tag
		return nil
	})
	since := time.Since(rotated)
	t.Logf("refresh %s: the second agent computed with version 2 %s after the rotation returned (%s of polling)",
		refresh, since.Round(time.Millisecond), took.Round(time.Millisecond))
	if !bytes.Equal(seen, tag2) {
		t.Errorf("version 2 through the second agent %x, through the first %x", seen, tag2)
	}
	// The second agent still verifies version 1's tags, plain and by
	// NAME@1, and names the version that did.
	if v, err := two.c.VerifyMACVersion(ctx, key, client.SHA256, msg, tag1); err != nil || v != 1 {
		t.Errorf("second agent verifying version 1's tag: version %d, %v", v, err)
	}
	if tag, _, err := two.c.MACVersion(ctx, key+"@1", client.SHA256, msg); err != nil || !bytes.Equal(tag, tag1) {
		t.Errorf("second agent, %s@1: %x, %v", key, tag, err)
	}
	if v, err := two.c.VerifyMACVersion(ctx, key, client.SHA256, msg, tag2); err != nil || v != 2 {
		t.Errorf("second agent verifying version 2's tag: version %d, %v", v, err)
	}

	// A rotation through the second agent takes the next number and is
	// seen by the first.
	info, err = two.c.RotateKey(ctx, "", key, nil, 0)
	if err != nil || info.Version != 3 {
		t.Fatalf("rotate through the second agent: %+v, %v", info, err)
	}
	rotated = time.Now()
	tag3, _, err := two.c.MACVersion(ctx, key, client.SHA256, msg)
	if err != nil {
		t.Fatal(err)
	}
	waitSeen(t, refresh, "version 3 through the first agent", func() error {
		tag, v, err := one.c.MACVersion(ctx, key, client.SHA256, msg)
		if err != nil {
			return err
		}
		if v != 3 || !bytes.Equal(tag, tag3) {
			return fmt.Errorf("version %d", v)
		}
		return nil
	})
	t.Logf("refresh %s: the first agent computed with version 3 %s after the rotation through the second returned", refresh, time.Since(rotated).Round(time.Millisecond))

	// Retiring version 1 through the first agent stops the second
	// verifying its tags, and leaves version 2 verifying.
	if err := one.c.RetireVersion(ctx, "", key, 1, false); err != nil {
		t.Fatal(err)
	}
	if err := one.c.VerifyMAC(ctx, key, client.SHA256, msg, tag1); !errors.Is(err, client.ErrInvalidSignature) {
		t.Errorf("the retiring agent verifying version 1's tag = %v, want ErrInvalidSignature", err)
	}
	retired := time.Now()
	waitSeen(t, refresh, "version 1 retired through the second agent", func() error {
		err := two.c.VerifyMAC(ctx, key, client.SHA256, msg, tag1)
		if errors.Is(err, client.ErrInvalidSignature) {
			return nil
		}
		return fmt.Errorf("verifying version 1's tag: %v", err)
	})
	t.Logf("refresh %s: the second agent stopped verifying version 1 %s after its retirement returned", refresh, time.Since(retired).Round(time.Millisecond))
	if v, err := two.c.VerifyMACVersion(ctx, key, client.SHA256, msg, tag2); err != nil || v != 2 {
		t.Errorf("second agent verifying version 2's tag after version 1 was retired: version %d, %v", v, err)
	}
}
