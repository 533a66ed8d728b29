package agent_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/hashes"
)

// A one-shot over more than providers.TurnInput bytes, run with a pause
// in its context, is hashed in pieces with a pause between each two, and
// its tag is the same; so is a verification, which still refuses a wrong
// tag. Without a pause in the context it is one call, as before.
func TestLongOneShotPausesBetweenPieces(t *testing.T) {
	ctx := context.Background()
	a, soft := newAgent(t)
	secret := []byte("pieces")
	if _, err := soft.ImportKey(ctx, "k", secret); err != nil {
		t.Fatal(err)
	}
	s := a.NewSession(owner)
	defer s.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), (16*providers.TurnInput+5)/16)
	data = append(data, "tail"...)
	wantPauses := (len(data) - 1) / providers.TurnInput
	for _, alg := range providers.Algorithms() {
		mac := hmac.New(hashes.New(alg), secret)
		mac.Write(data)
		want := mac.Sum(nil)
		pauses := 0
		pctx := providers.WithPause(ctx, func() { pauses++ })
		tag, err := s.MAC(pctx, []byte("k"), alg, data, nil)
		if err != nil || !bytes.Equal(tag, want) {
			t.Fatalf("%s: MAC over %d bytes in pieces: %x, %v; want %x", alg, len(data), tag, err, want)
		}
		if pauses != wantPauses {
			t.Fatalf("%s: %d pauses for %d bytes, want %d", alg, pauses, len(data), wantPauses)
		}
		pauses = 0
		if err := s.VerifyMAC(pctx, []byte("k"), alg, data, want); err != nil {
			t.Fatalf("%s: VerifyMAC in pieces: %v", alg, err)
		}
		if pauses != wantPauses {
			t.Fatalf("%s: VerifyMAC paused %d times, want %d", alg, pauses, wantPauses)
		}
		bad := bytes.Clone(want)
		bad[0] ^= 1
		if err := s.VerifyMAC(pctx, []byte("k"), alg, data, bad); !errors.Is(err, providers.ErrInvalidSignature) {
			t.Fatalf("%s: VerifyMAC of a wrong tag in pieces: %v", alg, err)
		}
	}
	pauses := 0
	if _, err := s.MAC(providers.WithPause(ctx, func() { pauses++ }), []byte("k"), providers.SHA256, data[:providers.TurnInput], nil); err != nil || pauses != 0 {
		t.Fatalf("MAC over exactly TurnInput bytes: %d pauses, %v; want none", pauses, err)
	}
}
