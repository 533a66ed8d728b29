package providertest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/providers"
)

// CheckLogsHoldNoSecrets runs a whole session through c against provider
// (import, MACs, verifications good and bad, a stream with a copy, errors,
// delete), then searches the agent's log and audit log, as returned by
// logs, for the key, the tags and the message in hex and base64, and for
// each of the extra secrets (a PIN, say). The agent should log at debug
// level for the search to mean something.
func CheckLogsHoldNoSecrets(t *testing.T, c *client.Client, provider string, alg providers.Algorithm, logs func() string, extra ...[]byte) {
	t.Helper()
	ctx := context.Background()
	secret := []byte("log-check-secret-0123456789abcdef0123456789abcdef")
	msg := []byte("log-check-message: the body of a webhook, private to the client")
	if _, err := c.ImportKey(ctx, provider, "log-check", secret); err != nil {
		t.Fatal(err)
	}
	tag, err := c.MAC(ctx, "log-check", alg, msg)
	if err != nil {
		t.Fatal(err)
	}
	c.VerifyMAC(ctx, "log-check", alg, msg, tag)
	bad := append([]byte(nil), tag...)
	bad[0] ^= 1
	c.VerifyMAC(ctx, "log-check", alg, msg, bad)
	h, err := c.New(ctx, "log-check", alg)
	if err != nil {
		t.Fatal(err)
	}
	h.Update(bytes.Repeat(msg, 100))
	cp, _ := h.Copy(ctx)
	long, _ := h.Finalize(ctx)
	cp.Verify(ctx, bad)
	c.MAC(ctx, "log-check", providers.Algorithm(99), msg)
	c.MAC(ctx, "no-such-key", alg, msg)
	c.Keys(ctx)
	c.DeleteKey(ctx, provider, "log-check")

	text := logs()
	if !strings.Contains(text, "log-check") {
		t.Fatalf("the log does not mention the session at all; is it captured?\n%s", text)
	}
	things := map[string][]byte{"key": secret, "tag": tag, "stream tag": long, "bad tag": bad, "message": msg}
	for i, e := range extra {
		things["extra secret "+string(rune('0'+i))] = e
	}
	for what, b := range things {
		for _, form := range []string{
			hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)),
			base64.StdEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
			string(b),
		} {
			if len(form) >= 4 && strings.Contains(text, form) {
				t.Errorf("the log holds the %s (%q)", what, form)
			}
		}
	}
}
