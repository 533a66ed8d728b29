// Package paths holds the default locations the agent and its clients
// agree on without configuration.
package paths

import (
	"fmt"
	"os"
	"path/filepath"
)

// SocketEnv names the environment variable that tells clients where the
// agent's socket is, as SSH_AUTH_SOCK does for ssh-agent.
const SocketEnv = "HMAC_AGENT_SOCK"

// DefaultSocket is $XDG_RUNTIME_DIR/hmac-agent/agent.sock, or
// /tmp/hmac-agent-$UID/agent.sock without XDG_RUNTIME_DIR.
func DefaultSocket() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "hmac-agent", "agent.sock")
	}
	return filepath.Join("/tmp", fmt.Sprintf("hmac-agent-%d", os.Getuid()), "agent.sock")
}

// ClientSocket is $HMAC_AGENT_SOCK, else DefaultSocket.
func ClientSocket() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	return DefaultSocket()
}

// DefaultState is $XDG_STATE_HOME/hmac-agent, else
// ~/.local/state/hmac-agent: where the default software keystore lives.
func DefaultState() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "hmac-agent"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no XDG_STATE_HOME and no home directory: %w", err)
	}
	return filepath.Join(home, ".local", "state", "hmac-agent"), nil
}
