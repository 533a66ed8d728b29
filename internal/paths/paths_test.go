package paths

import (
	"strings"
	"testing"
)

func TestAgentUIDFromEnv(t *testing.T) {
	for _, tt := range []struct {
		env     string
		uid     uint32
		ok      bool
		wantErr string
	}{
		{"", 0, false, ""},
		{"1005", 1005, true, ""},
		{"0", 0, true, ""},
		{"root", 0, true, ""},
		{"nobody", 65534, true, ""},
		{"no-such-user-here", 0, false, `$HMAC_AGENT_UID: "no-such-user-here" is neither a uid nor a known user name`},
		{"-1", 0, false, "neither a uid"},
		{"4294967296", 0, false, "neither a uid"},
	} {
		t.Setenv(AgentUIDEnv, tt.env)
		uid, ok, err := AgentUIDFromEnv()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: %v, want an error saying %q", tt.env, err, tt.wantErr)
			}
			continue
		}
		if err != nil || uid != tt.uid || ok != tt.ok {
			t.Errorf("%q: %d %v %v, want %d %v", tt.env, uid, ok, err, tt.uid, tt.ok)
		}
	}
}
