//go:build linux

package socket

import (
	"net"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/agent"
)

// peerOf reads the peer's credentials with SO_PEERCRED. They are the
// peer's at connect time, which is what a policy must judge: a process
// cannot change who connected by changing its uid afterwards.
func peerOf(c net.Conn) agent.Peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return agent.Peer{}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return agent.Peer{}
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return agent.Peer{}
	}
	return agent.Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Known: true}
}
