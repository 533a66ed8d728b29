//go:build linux

package socket

import (
	"net"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/agent"
)

// peerOf reads the peer's credentials with SO_PEERCRED and, when need
// asks for it, its process's identity (identity_linux.go). Both are the
// peer's at connect time, which is what a policy must judge: a process
// cannot change who connected by changing its uid or exec'ing afterwards.
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
			peer.Identity = identityOf(int(fd), cred.Pid, need)
		}
	}); err != nil {
		return agent.Peer{}
	}
	return peer
}
