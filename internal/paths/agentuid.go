package paths

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
)

// AgentUIDEnv names the environment variable that tells clients which uid,
// besides root and their own, may run the agent they talk to: a number or
// a user name.
const AgentUIDEnv = "HMAC_AGENT_UID"

// AgentUIDFromEnv returns the uid $HMAC_AGENT_UID names, and false when it
// is unset or empty. A value that names no user is an error rather than
// ignored: a client told to trust an agent user must not fall back to
// trusting fewer or other users silently.
func AgentUIDFromEnv() (uint32, bool, error) {
	v := os.Getenv(AgentUIDEnv)
	if v == "" {
		return 0, false, nil
	}
	uid, err := ParseUID(v)
	if err != nil {
		return 0, false, fmt.Errorf("$%s: %w", AgentUIDEnv, err)
	}
	return uid, true, nil
}

// ParseUID reads a uid given as a number or as a user name.
func ParseUID(v string) (uint32, error) {
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(v)
	if err != nil {
		return 0, fmt.Errorf("%q is neither a uid nor a known user name", v)
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %q has uid %q, not a number", v, u.Uid)
	}
	return uint32(n), nil
}
