package client

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/internal/paths"
)

// An Option adjusts how [Dial] connects.
type Option func(*dialOptions)

type dialOptions struct {
	agentUIDs []uint32
}

// WithAgentUID trusts an agent running as uid, in addition to root, the
// client's own uid and the uid $HMAC_AGENT_UID names. Use it when the
// agent runs as a user of its own that is not root and did not create its
// socket through systemd.
func WithAgentUID(uid uint32) Option {
	return func(o *dialOptions) { o.agentUIDs = append(o.agentUIDs, uid) }
}

// trustedUIDs lists the uids an agent may run as: root, this process's
// real and effective uids, $HMAC_AGENT_UID and the options'. An unusable
// $HMAC_AGENT_UID is an error, so a typo cannot quietly narrow or widen
// the set.
func trustedUIDs(opts dialOptions) ([]uint32, error) {
	uids := []uint32{0, uint32(os.Getuid()), uint32(os.Geteuid())}
	if uid, ok, err := paths.AgentUIDFromEnv(); err != nil {
		return nil, err
	} else if ok {
		uids = append(uids, uid)
	}
	return append(uids, opts.agentUIDs...), nil
}

// checkAgent reads the credentials of whoever listens on the other end of
// nc (SO_PEERCRED: the process that called listen, or systemd under socket
// activation) and refuses a uid not in trusted. It runs before anything is
// written, so a server planted at the socket path by another user learns
// nothing: no handshake, no key name, no data, no key bytes.
func checkAgent(nc net.Conn, path string, trusted []uint32) error {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("the agent at %s: %w: not a Unix socket", path, ErrUntrustedAgent)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("the agent at %s: %w: %v", path, ErrUntrustedAgent, err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		credErr = err
	}
	if credErr != nil {
		return fmt.Errorf("the agent at %s: %w: cannot read its credentials: %v", path, ErrUntrustedAgent, credErr)
	}
	for _, uid := range trusted {
		if cred.Uid == uid {
			return nil
		}
	}
	return fmt.Errorf("the server at %s runs as uid %d (pid %d), which is not root, this user (uid %d) or $%s: %w; nothing was sent to it",
		path, cred.Uid, cred.Pid, os.Getuid(), paths.AgentUIDEnv, ErrUntrustedAgent)
}
