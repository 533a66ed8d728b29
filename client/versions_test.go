package client_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"log/slog"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// testClock is a clock the test moves by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func dialAgent(t *testing.T, path string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func macVersion(t *testing.T, c *client.Client, key string, msg []byte) ([]byte, int) {
	t.Helper()
	tag, v, err := c.MACVersion(context.Background(), key, client.SHA256, msg)
	if err != nil {
		t.Fatalf("MAC %s: %v", key, err)
	}
	return tag, v
}

// TestVersionsThroughSocket is the key version conformance through a
// real socket, on every provider: rotate, verify old and new, NAME@N, a
// context and its copy that outlive a rotation, retire, destroy.
func TestVersionsThroughSocket(t *testing.T) { runVersions(t, versionsThroughSocket) }

func versionsThroughSocket(t *testing.T, b versionsBackend, start func(agenttest.Options) *versionsAgent) {
	ctx := context.Background()
	a := start(agenttest.Options{VersionRefresh: -1})
	c := dialAgent(t, a.Path)
	if _, err := c.ImportKey(ctx, b.provider, "hook", []byte("version one")); err != nil {
		t.Fatal(err)
	}
	msg := []byte("payload")
	tag1, v := macVersion(t, c, "hook", msg)
	if v != 1 || !bytes.Equal(tag1, hmacOf(client.SHA256, []byte("version one"), msg)) {
		t.Fatalf("before any rotation: version %d, tag %x", v, tag1)
	}
	// A context opened before the rotation keeps version 1, and so does
	// its copy made after it.
	before, err := c.New(ctx, "hook", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	before.Update(msg[:3])

	info, err := c.RotateKey(ctx, "", "hook", []byte("version two"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != 2 || info.State != providers.VersionCurrent {
		t.Fatalf("rotate = %+v", info)
	}
	copied, err := before.Copy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before.Update(msg[3:])
	copied.Update(msg[3:])
	if tag, err := before.Finalize(ctx); err != nil || !bytes.Equal(tag, tag1) || before.KeyVersion() != 1 {
		t.Errorf("context opened before the rotation: %x version %d, %v; want version 1's tag", tag, before.KeyVersion(), err)
	}
	if tag, err := copied.Finalize(ctx); err != nil || !bytes.Equal(tag, tag1) || copied.KeyVersion() != 1 {
		t.Errorf("copy made after the rotation: %x version %d, %v; want version 1's tag", tag, copied.KeyVersion(), err)
	}

	tag2, v := macVersion(t, c, "hook", msg)
	if v != 2 || !bytes.Equal(tag2, hmacOf(client.SHA256, []byte("version two"), msg)) {
		t.Fatalf("after the rotation: version %d, tag %x", v, tag2)
	}
	h, _ := c.New(ctx, "hook", client.SHA256)
	h.Update(msg)
	if tag, err := h.Finalize(ctx); err != nil || !bytes.Equal(tag, tag2) || h.KeyVersion() != 2 {
		t.Errorf("FINALIZE after the rotation: version %d, %v", h.KeyVersion(), err)
	}
	// A plain name verifies both versions' tags and says which matched.
	for want, tag := range map[int][]byte{1: tag1, 2: tag2} {
		if got, err := c.VerifyMACVersion(ctx, "hook", client.SHA256, msg, tag); err != nil || got != want {
			t.Errorf("VERIFY_MAC of version %d's tag: version %d, %v", want, got, err)
		}
		h, _ := c.New(ctx, "hook", client.SHA256)
		h.Update(msg)
		if err := h.Verify(ctx, tag); err != nil || h.KeyVersion() != want {
			t.Errorf("VERIFY of version %d's tag: version %d, %v", want, h.KeyVersion(), err)
		}
	}
	// NAME@N is version N alone.
	if tag, v := macVersion(t, c, "hook@1", msg); v != 1 || !bytes.Equal(tag, tag1) {
		t.Errorf("MAC hook@1: version %d", v)
	}
	if err := c.VerifyMAC(ctx, "hook@1", client.SHA256, msg, tag2); !errors.Is(err, client.ErrInvalidSignature) {
		t.Errorf("hook@1 verifying version 2's tag = %v, want ErrInvalidSignature", err)
	}
	if err := c.VerifyMAC(ctx, "hook@2", client.SHA256, msg, tag2); err != nil {
		t.Errorf("hook@2 verifying its own tag = %v", err)
	}
	for _, bad := range []string{"hook@3", "hook@0", "hook@01", "hook@x", "hook@"} {
		if _, err := c.MAC(ctx, bad, client.SHA256, msg); !errors.Is(err, client.ErrKeyNotFound) {
			t.Errorf("MAC %s = %v, want ErrKeyNotFound", bad, err)
		}
	}
	if err := c.VerifyMAC(ctx, "hook", client.SHA256, msg, hmacOf(client.SHA256, []byte("version three"), msg)); !errors.Is(err, client.ErrInvalidSignature) {
		t.Errorf("a tag of no version = %v, want ErrInvalidSignature", err)
	}

	// Retiring: the current version is refused; version 1 stops verifying.
	if err := c.RetireVersion(ctx, "", "hook", 2, false); !errors.Is(err, client.ErrInvalidArgument) {
		t.Errorf("retiring the current version = %v, want ErrInvalidArgument", err)
	}
	if err := c.RetireVersion(ctx, "", "hook", 1, false); err != nil {
		t.Fatal(err)
	}
	if err := c.VerifyMAC(ctx, "hook", client.SHA256, msg, tag1); !errors.Is(err, client.ErrInvalidSignature) {
		t.Errorf("a retired version's tag = %v, want ErrInvalidSignature", err)
	}
	if _, err := c.MAC(ctx, "hook@1", client.SHA256, msg); !errors.Is(err, client.ErrKeyNotFound) {
		t.Errorf("MAC with a retired version = %v, want ErrKeyNotFound", err)
	}
	if err := c.RetireVersion(ctx, "", "hook", 1, true); err != nil {
		t.Fatal(err)
	}
	keys, err := c.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var listed *client.KeyInfo
	for i := range keys {
		if keys[i].Name == "hook" {
			listed = &keys[i]
		}
	}
	if listed == nil || listed.Version != 2 || len(listed.Versions) != 2 || listed.Versions[0].State != providers.VersionDestroyed {
		t.Errorf("listed: %+v", listed)
	}
}

// TestVersionsRestart: a reload and a restart keep a key's versions, on
// every provider: they are read back from the provider's storage, and a
// context opened before a reload keeps its version.
func TestVersionsRestart(t *testing.T) { runVersions(t, versionsRestart) }

func versionsRestart(t *testing.T, b versionsBackend, start func(agenttest.Options) *versionsAgent) {
	ctx := context.Background()
	a := start(agenttest.Options{VersionRefresh: -1})
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GenerateKey(ctx, b.provider, "k", 0); err != nil {
		t.Fatal(err)
	}
	tag1, _ := macVersion(t, c, "k", []byte("m"))
	if _, err := c.RotateKey(ctx, "", "k", nil, 0); err != nil {
		t.Fatal(err)
	}
	tag2, _ := macVersion(t, c, "k", []byte("m"))

	// A reload keeps the versions, and a context opened before it keeps
	// the version it was opened with.
	h, err := c.New(ctx, "k", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	h.Update([]byte("m"))
	if err := a.Agent.Agent.Reload([]agent.KeyConfig{{Name: "k", Provider: b.provider, Policy: agent.OwnerPolicy(uint32(os.Geteuid()))}}, nil); err != nil {
		t.Fatal(err)
	}
	if tag, err := h.Finalize(ctx); err != nil || h.KeyVersion() != 2 || !bytes.Equal(tag, tag2) {
		t.Errorf("a context across a reload: version %d, %v", h.KeyVersion(), err)
	}
	if tag, v := macVersion(t, c, "k", []byte("m")); v != 2 || !bytes.Equal(tag, tag2) {
		t.Errorf("after a reload: version %d", v)
	}
	if v, err := c.VerifyMACVersion(ctx, "k", client.SHA256, []byte("m"), tag1); err != nil || v != 1 {
		t.Errorf("version 1's tag after a reload: version %d, %v", v, err)
	}
	c.Close()
	a.Stop()

	a = start(agenttest.Options{VersionRefresh: -1})
	c = dialAgent(t, a.Path)
	if tag, v := macVersion(t, c, "k", []byte("m")); v != 2 || !bytes.Equal(tag, tag2) {
		t.Errorf("after a restart: version %d", v)
	}
	if v, err := c.VerifyMACVersion(ctx, "k", client.SHA256, []byte("m"), tag1); err != nil || v != 1 {
		t.Errorf("version 1's tag after a restart: version %d, %v", v, err)
	}
}

// TestVersionsGraceAndAutoRotation runs the agent's own retiring and
// rotating on a clock the test controls, on every provider.
func TestVersionsGraceAndAutoRotation(t *testing.T) { runVersions(t, versionsGraceAndAutoRotation) }

func versionsGraceAndAutoRotation(t *testing.T, b versionsBackend, start func(agenttest.Options) *versionsAgent) {
	ctx := context.Background()
	clock := &testClock{now: time.Now()}
	var auditBuf agenttest.SyncBuffer
	a := start(agenttest.Options{
		VersionRefresh: -1,
		Now:            clock.Now,
		Audit:          slog.New(slog.NewJSONHandler(&auditBuf, nil)),
		Keys: []agent.KeyConfig{{
			Name: "rolled", Provider: b.provider, Policy: agent.OwnerPolicy(uint32(os.Geteuid())),
			VerifyGrace: time.Hour, RotateEvery: 24 * time.Hour,
		}},
	})
	if _, err := a.Provider.(providers.Importer).ImportKey(ctx, "rolled", []byte("first")); err != nil {
		t.Fatal(err)
	}
	c := dialAgent(t, a.Path)
	msg := []byte("m")
	tag1, v := macVersion(t, c, "rolled", msg)
	if v != 1 {
		t.Fatalf("version %d", v)
	}
	// Not due yet: nothing changes.
	clock.Advance(23 * time.Hour)
	a.Agent.Agent.RefreshVersions(ctx)
	if _, v := macVersion(t, c, "rolled", msg); v != 1 {
		t.Errorf("rotated before rotate_every: version %d", v)
	}
	// Due: the agent rotates by itself, and the old version verifies
	// through its grace.
	clock.Advance(2 * time.Hour)
	a.Agent.Agent.RefreshVersions(ctx)
	tag2, v := macVersion(t, c, "rolled", msg)
	if v != 2 {
		t.Fatalf("after rotate_every: version %d, want 2", v)
	}
	// The listing says when version 1 stops verifying: an hour after
	// version 2 replaced it.
	infos, err := c.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		if info.Name != "rolled" {
			continue
		}
		if len(info.Versions) != 2 || info.Versions[0].Superseded.IsZero() ||
			!info.Versions[0].VerifiesUntil.Equal(info.Versions[0].Superseded.Add(time.Hour)) || !info.Versions[1].VerifiesUntil.IsZero() {
			t.Errorf("listed versions: %+v", info.Versions)
		}
	}
	// Providers date versions by the real clock, and the grace runs from
	// when version 2 was made: the clock comes back to real time.
	clock.now = time.Now()
	a.Agent.Agent.RefreshVersions(ctx)
	if v, err := c.VerifyMACVersion(ctx, "rolled", client.SHA256, msg, tag1); err != nil || v != 1 {
		t.Errorf("version 1 within its grace: %d, %v", v, err)
	}
	clock.now = time.Now().Add(30 * time.Minute)
	a.Agent.Agent.RefreshVersions(ctx)
	if err := c.VerifyMAC(ctx, "rolled", client.SHA256, msg, tag1); err != nil {
		t.Errorf("version 1 half-way through its grace: %v", err)
	}
	clock.now = time.Now().Add(61 * time.Minute)
	a.Agent.Agent.RefreshVersions(ctx)
	if err := c.VerifyMAC(ctx, "rolled", client.SHA256, msg, tag1); !errors.Is(err, client.ErrInvalidSignature) {
		t.Errorf("version 1 past its grace = %v, want ErrInvalidSignature", err)
	}
	if err := c.VerifyMAC(ctx, "rolled", client.SHA256, msg, tag2); err != nil {
		t.Errorf("version 2 = %v", err)
	}
	vs, err := a.Provider.(providers.Versioner).Versions(ctx, "rolled")
	if err != nil {
		t.Fatal(err)
	}
	if vs[0].State != providers.VersionRetired {
		t.Errorf("version 1 past its grace is %s in the provider, want retired by the agent", vs[0].State)
	}
	var rotated, retired bool
	for _, line := range strings.Split(auditBuf.String(), "\n") {
		var e struct {
			Operation string `json:"operation"`
			Key       string `json:"key"`
			Version   int    `json:"version"`
		}
		json.Unmarshal([]byte(line), &e)
		rotated = rotated || (e.Operation == "rotate" && e.Key == "rolled" && e.Version == 2)
		retired = retired || (e.Operation == "retire" && e.Key == "rolled" && e.Version == 1)
	}
	if !rotated || !retired {
		t.Errorf("audit log lacks the agent's rotation (%v) or retirement (%v):\n%s", rotated, retired, auditBuf.String())
	}
}

// TestVersionsSeenByAnotherAgent: two agents share one keystore; a
// rotation through one is served by the other after its refresh.
func TestVersionsSeenByAnotherAgent(t *testing.T) {
	ctx := context.Background()
	keys := filepath.Join(t.TempDir(), "keys")
	dir := agenttest.SocketDir(t)
	const refresh = 200 * time.Millisecond
	a, stopA, err := agenttest.Run(keys, filepath.Join(dir, "a.sock"), agenttest.Options{VersionRefresh: refresh})
	if err != nil {
		t.Fatal(err)
	}
	defer stopA()
	b, stopB, err := agenttest.Run(keys, filepath.Join(dir, "b.sock"), agenttest.Options{VersionRefresh: refresh})
	if err != nil {
		t.Fatal(err)
	}
	defer stopB()
	ca, cb := dialAgent(t, a.Path), dialAgent(t, b.Path)
	if _, err := ca.GenerateKey(ctx, "", "shared", 0); err != nil {
		t.Fatal(err)
	}
	tag1, _ := macVersion(t, cb, "shared", []byte("m"))
	if _, err := ca.RotateKey(ctx, "", "shared", nil, 0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var v int
	for v != 2 && time.Since(start) < 10*time.Second {
		time.Sleep(20 * time.Millisecond)
		_, v = macVersion(t, cb, "shared", []byte("m"))
	}
	if v != 2 {
		t.Fatalf("the second agent still MACs with version %d", v)
	}
	t.Logf("the second agent served the rotation after %v (refresh interval %v)", time.Since(start).Round(time.Millisecond), refresh)
	if err := cb.VerifyMAC(ctx, "shared", client.SHA256, []byte("m"), tag1); err != nil {
		t.Errorf("the second agent no longer verifies version 1: %v", err)
	}
}

// TestProtocolVersion1Unchanged: a client that speaks only protocol
// version 1 gets TAG and OK, as before key versions.
func TestProtocolVersion1Unchanged(t *testing.T) {
	a := agenttest.Start(t, agenttest.Options{VersionRefresh: -1})
	if _, err := a.Soft.ImportKey(context.Background(), "old", []byte("k")); err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("unix", a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fr := wire.NewFrameReader(bufio.NewReader(nc), wire.DefaultMaxFrame)
	roundTrip := func(m wire.Message) wire.Message {
		t.Helper()
		b, err := m.Append(nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Write(b); err != nil {
			t.Fatal(err)
		}
		body, err := fr.Next()
		if err != nil {
			t.Fatal(err)
		}
		var r wire.Message
		if err := wire.Decode(body, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := roundTrip(wire.Message{Type: wire.TypeHello, ID: 1, MinVersion: 1, MaxVersion: 1}); r.Type != wire.TypeHelloReply || r.Version != 1 {
		t.Fatalf("HELLO 1..1 answered %s version %d", r.Type, r.Version)
	}
	r := roundTrip(wire.Message{Type: wire.TypeMAC, ID: 2, Algorithm: uint8(providers.SHA256), Key: []byte("old"), Data: []byte("m")})
	want := hmacOf(client.SHA256, []byte("k"), []byte("m"))
	if r.Type != wire.TypeTag || !bytes.Equal(r.Tag, want) {
		t.Errorf("MAC on protocol 1: %s %x", r.Type, r.Tag)
	}
	r = roundTrip(wire.Message{Type: wire.TypeVerifyMAC, ID: 3, Algorithm: uint8(providers.SHA256), Key: []byte("old"), Tag: want, Data: []byte("m")})
	if r.Type != wire.TypeOK {
		t.Errorf("VERIFY_MAC on protocol 1: %s", r.Type)
	}
	if r := roundTrip(wire.Message{Type: wire.TypeHello, ID: 4, MinVersion: 1, MaxVersion: 9}); r.Type != wire.TypeError {
		t.Errorf("a second HELLO: %s", r.Type)
	}
}
