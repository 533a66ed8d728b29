package config

import (
	"strings"
	"testing"
)

func TestMetricsAddress(t *testing.T) {
	for _, tc := range []struct {
		metrics string
		want    string // part of the error; empty means valid
	}{
		{"127.0.0.1:9464", ""},
		{"[::1]:9464", ""},
		{"unix:/run/hmac-agent-metrics/metrics.sock", ""},
		{"9464", "metrics: must be host:port or unix:/path"},
		{"unix:metrics.sock", "metrics: unix: needs an absolute path"},
		{"unix:", "metrics: unix: needs an absolute path"},
		{"unix:/run/hmac-agent/agent.sock", "metrics: \"/run/hmac-agent/agent.sock\" is the agent's own socket"},
		{"unix:/" + strings.Repeat("d", 120), "metrics: path is 121 bytes"},
	} {
		_, err := Load(write(t, "socket = \"/run/hmac-agent/agent.sock\"\nmetrics = \""+tc.metrics+"\"\n"+
			"[[provider]]\nname = \"soft\"\ntype = \"software\"\npath = \"/var/lib/hmac-agent/keys\"\n"))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("metrics = %q: %v", tc.metrics, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("metrics = %q: error %v, want %q", tc.metrics, err, tc.want)
		}
	}
}
