package metrics_test

import (
	"context"
	"io"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/metrics"
)

func TestMetrics(t *testing.T) {
	m := metrics.New()
	a := agenttest.Start(t, agenttest.Options{Observe: m.Observe})
	m.Watch(a.Agent, a.Server)
	ctx := context.Background()
	a.Soft.ImportKey(ctx, "k", []byte("k"))
	c, err := client.Dial(ctx, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.MAC(ctx, "k", client.SHA256, make([]byte, 100))
	c.VerifyMAC(ctx, "k", client.SHA256, nil, []byte("wrong"))
	h, _ := c.New(ctx, "k", client.SHA256)
	h.Update(make([]byte, 50))
	// A tag of version 1 verified after a rotation counts as satisfied
	// by a previous version.
	old, _ := c.MAC(ctx, "k", client.SHA256, []byte("m"))
	// Through the agent itself: a request through the socket could still
	// count as queued when the metrics are read.
	me := agent.Peer{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), Known: true}
	if _, err := a.Agent.RotateKey(ctx, me, "", "k", nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.VerifyMAC(ctx, "k", client.SHA256, []byte("m"), old); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		`hmac_agent_operations_total{key="k",operation="mac",result="ok"} 2`,
		`hmac_agent_key_version_uses_total{key="k",operation="mac",version="1"} 2`,
		`hmac_agent_key_version_uses_total{key="k",operation="verify_mac",version="1"} 1`,
		`hmac_agent_previous_version_verifications_total{key="k",version="1"} 1`,
		`hmac_agent_operations_total{key="k",operation="verify_mac",result="invalid_signature"} 1`,
		`hmac_agent_bytes_total{key="k"} 102`,
		`hmac_agent_operation_duration_seconds_count{operation="mac"} 2`,
		`hmac_agent_connections 1`,
		`hmac_agent_queued_bytes 0`,
		`hmac_agent_contexts 1`,
		`hmac_agent_provider_up{kind="software",provider="soft"} 1`,
		"# TYPE hmac_agent_operations_total counter",
		"# TYPE hmac_agent_operation_duration_seconds histogram",
		"process_resident_memory_bytes ",
		"go_goroutines ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
