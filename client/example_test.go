package client_test

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
)

// TestMain starts an agent holding the key "webhook" (the bytes "Jefe",
// from RFC 4231) and points HMAC_AGENT_SOCK at it, so the examples run as
// they would against a real agent.
func TestMain(m *testing.M) {
	if os.Getenv("HMAC_AGENT_POLICY_CHILD") != "" {
		policyChild()
	}
	if os.Getenv("HMAC_AGENT_PROBE_CHILD") != "" {
		probeChild()
	}
	agenttest.RunForgerIfAsked()
	dir, err := os.MkdirTemp("", "hmac-agent-example-")
	if err != nil {
		log.Fatal(err)
	}
	a, stop, err := agenttest.Run(filepath.Join(dir, "keys"), filepath.Join(dir, "agent.sock"), agenttest.Options{})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := a.Soft.ImportKey(context.Background(), "webhook", []byte("Jefe")); err != nil {
		log.Fatal(err)
	}
	os.Setenv("HMAC_AGENT_SOCK", a.Path)
	code := m.Run()
	stop()
	os.RemoveAll(dir)
	softhsm.Cleanup() // tokens of the tests that use SoftHSM2
	os.Exit(code)
}

// Sign a message with a key the agent holds: the key never enters this
// process.
func Example() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "") // $HMAC_AGENT_SOCK, else the default path
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	tag, err := c.MAC(ctx, "webhook", client.SHA256, []byte("what do ya want for nothing?"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(hex.EncodeToString(tag))
	// Output: 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843
}

// The incremental API, as in pyca/cryptography: update, copy, finalize.
func ExampleHMAC() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	h, err := c.New(ctx, "webhook", client.SHA256)
	if err != nil {
		log.Fatal(err)
	}
	h.Update([]byte("what do ya want "))
	branch, err := h.Copy(ctx) // an independent context with the same state
	if err != nil {
		log.Fatal(err)
	}
	h.Update([]byte("for nothing?"))
	tag, err := h.Finalize(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(hex.EncodeToString(tag))

	branch.Update([]byte("for something?"))
	other, _ := branch.Finalize(ctx)
	fmt.Println(hex.EncodeToString(other) != hex.EncodeToString(tag))

	_, err = h.Finalize(ctx)
	fmt.Println(errors.Is(err, client.ErrAlreadyFinalized))
	// Output:
	// 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843
	// true
	// true
}

// Verify a webhook's signature. The comparison happens in the agent, in
// constant time.
func ExampleClient_VerifyMAC() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	body := []byte("what do ya want for nothing?")
	good, _ := hex.DecodeString("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
	fmt.Println(c.VerifyMAC(ctx, "webhook", client.SHA256, body, good))

	err = c.VerifyMAC(ctx, "webhook", client.SHA256, body, good[:16])
	fmt.Println(errors.Is(err, client.ErrInvalidSignature))
	// Output:
	// <nil>
	// true
}
