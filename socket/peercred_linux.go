//go:build linux

package socket

import (
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/agent"
)

// peerOf reads the peer's credentials with SO_PEERCRED and, when need
// asks for it, its process's identity (identity_linux.go). The
// credentials are the peer's at connect time; the identity is read now,
// when the connection is taken from the listening socket, and a process
// that exec'd between its connect and now is judged as what it runs now
// (docs/security.md). Neither changes afterwards: a process cannot change
// who connected by changing its uid or exec'ing later. It returns an
// error, to tell the peer, when its identity needed its executable hashed
// and that did not finish within hashTimeout (see digestOf).
func peerOf(c net.Conn, need agent.IdentityNeed, hashTimeout time.Duration) (agent.Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return agent.Peer{}, nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return agent.Peer{}, nil
	}
	var peer agent.Peer
	var idErr error
	if err := raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			return
		}
		peer = agent.Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Known: true}
		if need > agent.NeedNone {
			peer.Identity, idErr = identityOf(int(fd), cred.Pid, cred.Uid, need, hashTimeout)
		}
	}); err != nil {
		return agent.Peer{}, nil
	}
	return peer, idErr
}
