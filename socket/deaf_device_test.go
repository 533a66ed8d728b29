package socket_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/softhsm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// TestDeafClientHoldsNoDeviceSlot: a client that sends one-shots on a
// device key and never reads the replies leaves the agent blocked
// writing to it, and with the device's one slot (a PKCS#11 token with
// one session, as a TPM has one) another connection's one-shot is still
// served. Had a call's turn passed only once its reply was written, the
// deaf client would hold the device from every caller for good: its
// call finished, no deadline applied.
func TestDeafClientHoldsNoDeviceSlot(t *testing.T) {
	tok := softhsm.Require(t, fmt.Sprintf("deaf%d", tokenSeq.Add(1)))
	ctx := context.Background()
	hsm, err := pkcs11.Open(ctx, pkcs11.Config{Name: "hsm", Module: softhsm.Module, TokenLabel: tok.Label, PIN: []byte(tok.PIN),
		Sessions: 1, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if hsm.Parallelism() != 1 {
		t.Fatalf("parallelism %d, want 1", hsm.Parallelism())
	}
	a := start(t, agenttest.Options{Providers: []providers.Provider{hsm}})
	if _, err := hsm.ImportKey(ctx, "hk", testSecret); err != nil {
		t.Fatal(err)
	}

	// The deaf client sends until the agent stops reading it: its reader
	// and the device call's reply both wait to write.
	deaf := dialRaw(t, a.Path, true)
	var chunk []byte
	for i := range uint32(1000) {
		m := wire.Message{Type: wire.TypeMAC, ID: i + 1, Algorithm: uint8(providers.SHA256), Key: []byte("hk"), Data: []byte("deaf")}
		if chunk, err = m.Append(chunk); err != nil {
			t.Fatal(err)
		}
	}
	for end := time.Now().Add(30 * time.Second); ; {
		if time.Now().After(end) {
			t.Fatal("the agent kept reading a client that never reads")
		}
		deaf.nc.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := deaf.nc.Write(chunk); errors.Is(err, os.ErrDeadlineExceeded) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}

	victim := dialRaw(t, a.Path, true)
	victim.send(wire.Message{Type: wire.TypeMAC, ID: 1, Algorithm: uint8(providers.SHA256), Key: []byte("hk"), Data: []byte("victim")})
	if m := victim.recv(); m.Type != wire.TypeTag {
		t.Fatalf("the other connection's MAC: %s %q", m.Type, m.Data)
	}
}
