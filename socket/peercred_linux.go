//go:build linux

package socket

import (
	"net"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/agent"
)

// peerOf reads the peer's credentials with SO_PEERCRED and, when need
// asks for it, its process's identity (identity_linux.go). The
// credentials are the peer's at connect time; the identity is read now,
// when the connection is taken from the listening socket, and a process
// that exec'd between its connect and now is judged as what it runs now
// (docs/security.md). Neither changes afterwards: a process cannot change
// who connected by changing its uid or exec'ing later.
func peerOf(c net.Conn, need agent.IdentityNeed) agent.Peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return agent.Peer{}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return agent.Peer{}
	}
	var peer agent.Peer
	if err := raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			return
		}
		peer = agent.Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Known: true}
		if need > agent.NeedNone {
			peer.Identity = identityOf(int(fd), cred.Pid, cred.Uid, need)
		}
	}); err != nil {
		return agent.Peer{}
	}
	return peer
}
