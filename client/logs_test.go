package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/providers/providertest"
)

func TestLogsHoldNoSecrets(t *testing.T) {
	var buf agenttest.SyncBuffer
	debug := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	audit := slog.New(slog.NewJSONHandler(&buf, nil))
	a := agenttest.Start(t, agenttest.Options{Logger: debug, Audit: audit})
	c, err := client.Dial(context.Background(), a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	providertest.CheckLogsHoldNoSecrets(t, c, "soft", client.SHA256, buf.String)
	if !bytes.Contains([]byte(buf.String()), []byte(`"msg":"key use"`)) {
		t.Error("no audit lines")
	}
}

func TestAuditLineFields(t *testing.T) {
	var buf agenttest.SyncBuffer
	a := agenttest.Start(t, agenttest.Options{Audit: slog.New(slog.NewJSONHandler(&buf, nil))})
	ctx := context.Background()
	a.Soft.ImportKey(ctx, "audited", []byte("k"))
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.MAC(ctx, "audited", client.SHA256, make([]byte, 123))
	var line map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(buf.String(), "\n", 2)[0]), &line); err != nil {
		t.Fatalf("audit line is not JSON: %v: %q", err, buf.String())
	}
	for _, f := range []string{"time", "key", "operation", "algorithm", "uid", "gid", "pid", "result", "bytes", "duration"} {
		if _, ok := line[f]; !ok {
			t.Errorf("audit line lacks %q: %v", f, line)
		}
	}
	if line["key"] != "audited" || line["operation"] != "mac" || line["result"] != "ok" || line["bytes"] != float64(123) || line["algorithm"] != "sha256" {
		t.Errorf("audit line %v", line)
	}
}
