package client_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
	"github.com/hmac-agent/hmac-agent/socket"
)

func TestConformanceThroughSocket(t *testing.T) {
	a := agenttest.Start(t, agenttest.Options{})
	c, err := client.Dial(context.Background(), a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	providertest.Run(t, providertest.ClientSubject(c, "soft", providers.Algorithms()))
}

func TestManyGoroutinesShareOneClient(t *testing.T) {
	a := agenttest.Start(t, agenttest.Options{})
	ctx := context.Background()
	secret := []byte("shared-client-key")
	if _, err := a.Soft.ImportKey(ctx, "k", secret); err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 64 {
		wg.Go(func() {
			for i := range 50 {
				msg := []byte(fmt.Sprintf("g%d-i%d", g, i))
				want := hmacOf(client.SHA256, secret, msg)
				switch i % 3 {
				case 0:
					tag, err := c.MAC(ctx, "k", client.SHA256, msg)
					if err != nil || !bytes.Equal(tag, want) {
						errs <- fmt.Errorf("MAC: %x %v", tag, err)
						return
					}
				case 1:
					if err := c.VerifyMAC(ctx, "k", client.SHA256, msg, want); err != nil {
						errs <- fmt.Errorf("VerifyMAC: %v", err)
						return
					}
				case 2:
					h, err := c.New(ctx, "k", client.SHA256)
					if err != nil {
						errs <- err
						return
					}
					for _, b := range msg {
						h.Update([]byte{b})
					}
					if err := h.Verify(ctx, want); err != nil {
						errs <- fmt.Errorf("Verify: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st, _ := c.Status(ctx); st.Contexts != 0 {
		t.Errorf("%d contexts left open", st.Contexts)
	}
}

func TestAgentNotRunning(t *testing.T) {
	path := filepath.Join(agenttest.SocketDir(t), "agent.sock")
	_, err := client.Dial(context.Background(), path)
	if !errors.Is(err, client.ErrAgentNotRunning) || !strings.Contains(err.Error(), path) {
		t.Errorf("Dial with no agent = %v, want ErrAgentNotRunning naming %s", err, path)
	}
	t.Setenv("HMAC_AGENT_SOCK", path)
	if _, err := client.Dial(context.Background(), ""); !errors.Is(err, client.ErrAgentNotRunning) || !strings.Contains(err.Error(), path) {
		t.Errorf("Dial through HMAC_AGENT_SOCK = %v, want ErrAgentNotRunning naming %s", err, path)
	}
}

// TestAgentRestart: contexts on a lost connection report ErrContextLost;
// the next fresh call dials the new agent.
func TestAgentRestart(t *testing.T) {
	ctx := context.Background()
	a := agenttest.Start(t, agenttest.Options{})
	a.Soft.ImportKey(ctx, "k", []byte("restart-key"))
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := c.New(ctx, "k", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	h.Update([]byte("before"))
	a.Server.Close()

	if _, err := h.Finalize(ctx); !errors.Is(err, client.ErrContextLost) {
		t.Errorf("Finalize across a restart = %v, want ErrContextLost", err)
	}
	if _, err := c.MAC(ctx, "k", client.SHA256, nil); !errors.Is(err, client.ErrAgentNotRunning) {
		t.Errorf("MAC with the agent down = %v, want ErrAgentNotRunning", err)
	}
	// A new agent on the same path.
	l, err := socket.Listen(a.Path, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := socket.NewServer(a.Agent, socket.Limits{}, nil)
	go srv.Serve(ctx, l)
	defer srv.Close()
	if _, err := c.MAC(ctx, "k", client.SHA256, []byte("after")); err != nil {
		t.Errorf("MAC after the agent came back: %v", err)
	}
}

func TestErrorsKeepIdentity(t *testing.T) {
	ctx := context.Background()
	a := agenttest.Start(t, agenttest.Options{})
	a.Soft.ImportKey(ctx, "k", []byte("identity"))
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"missing key", func() error { _, err := c.New(ctx, "missing", client.SHA256); return err }(), client.ErrKeyNotFound},
		{"bad algorithm", func() error { _, err := c.New(ctx, "k", client.Algorithm(77)); return err }(), client.ErrUnsupportedAlgorithm},
		{"bad tag", c.VerifyMAC(ctx, "k", client.SHA256, nil, []byte("short")), client.ErrInvalidSignature},
		{"exists", func() error { _, err := c.ImportKey(ctx, "", "k", []byte("x")); return err }(), client.ErrKeyExists},
		{"bad name", func() error { _, err := c.GenerateKey(ctx, "", "no/slash", 0); return err }(), client.ErrInvalidArgument},
		{"no provider", func() error { _, err := c.GenerateKey(ctx, "nowhere", "x", 0); return err }(), client.ErrInvalidArgument},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want errors.Is %v", tc.name, tc.err, tc.want)
		}
	}
}

func TestLongMessagesStream(t *testing.T) {
	ctx := context.Background()
	a := agenttest.Start(t, agenttest.Options{})
	secret := []byte("long")
	a.Soft.ImportKey(ctx, "k", secret)
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB: many frames
	tag, err := c.MAC(ctx, "k", client.SHA512, msg)
	if err != nil || !bytes.Equal(tag, hmacOf(client.SHA512, secret, msg)) {
		t.Fatalf("MAC of %d bytes: %x %v", len(msg), tag, err)
	}
	if err := c.VerifyMAC(ctx, "k", client.SHA512, msg, tag); err != nil {
		t.Fatal(err)
	}
	hh, err := c.NewHash(ctx, "k", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	io.Copy(hh, bytes.NewReader(msg))
	if got := hh.Sum(nil); !bytes.Equal(got, hmacOf(client.SHA256, secret, msg)) || hh.Err() != nil {
		t.Errorf("hash.Hash adapter: %x %v", got, hh.Err())
	}
	hh.Write([]byte("more"))
	if got := hh.Sum([]byte("prefix")); !bytes.Equal(got, append([]byte("prefix"), hmacOf(client.SHA256, secret, append(msg, "more"...))...)) {
		t.Errorf("Sum after more input: %x", got)
	}
}

func hmacOf(alg client.Algorithm, key, msg []byte) []byte {
	h := hmac.New(hashes.New(alg), key)
	h.Write(msg)
	return h.Sum(nil)
}

// TestCancelWhileWaiting: callers whose context ends while they wait, one
// of them reading the socket for the others, give up cleanly; the others
// get their replies and the connection stays usable.
func TestCancelWhileWaiting(t *testing.T) {
	slow := &agenttest.SlowProvider{Secret: []byte("slow"), Delay: 200 * time.Millisecond}
	a := agenttest.Start(t, agenttest.Options{Providers: []providers.Provider{slow}})
	ctx := context.Background()
	a.Soft.ImportKey(ctx, "fast", []byte("fast"))
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Go(func() { // these give up before the device answers
			cctx, cancel := context.WithTimeout(ctx, time.Duration(10+i)*time.Millisecond)
			defer cancel()
			if _, err := c.MAC(cctx, "slow-key", client.SHA256, []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
				errs <- fmt.Errorf("cancelled caller: %v", err)
			}
		})
		wg.Go(func() { // these wait for it
			tag, err := c.MAC(ctx, "slow-key", client.SHA256, []byte("x"))
			if err != nil || !bytes.Equal(tag, hmacOf(client.SHA256, []byte("slow"), []byte("x"))) {
				errs <- fmt.Errorf("patient caller: %x %v", tag, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for range 100 {
		if _, err := c.MAC(ctx, "fast", client.SHA256, []byte("after")); err != nil {
			t.Fatalf("after cancellations: %v", err)
		}
	}
}
