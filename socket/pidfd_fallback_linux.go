//go:build linux

package socket

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Before Linux 6.5 there is no SO_PEERPIDFD: the kernel keeps only the
// peer's pid number, which may name another process by the time the agent
// reads it. There the agent pins whatever process has the SO_PEERCRED pid
// with pidfd_open, and counts it as the peer only if it holds the other
// end of this very connection: a process that reused the pid of a caller
// that exited does not, unless that caller handed it the connection. The
// check reads the process's open files, which needs root or
// CAP_SYS_PTRACE for callers of other uids.

// peerPidfd returns a pidfd for the peer of socket fd, from SO_PEERPIDFD
// or, on kernels without it, pinned by pidfd_open and checked as above.
func peerPidfd(fd int, pid int32) (int, error) {
	if withoutPeerPidfd.Load() {
		return pidfdByPID(fd, pid)
	}
	pidfd, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return pidfdByPID(fd, pid)
	}
	return pidfd, err
}

// withoutPeerPidfd makes tests take the older kernels' path.
var withoutPeerPidfd atomic.Bool

var errNotPeer = errors.New("the process with the peer's pid does not hold the connection")

// maxScannedFDs bounds the open files read of one caller: a caller with
// more has no identity on kernels without SO_PEERPIDFD.
const maxScannedFDs = 16384

// pidfdByPID pins the process with pid and checks it holds the other end
// of socket fd. The caller checks afterwards that it has not exited, which
// covers this check too.
func pidfdByPID(fd int, pid int32) (int, error) {
	pidfd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		return -1, err
	}
	peer, err := unixPeerInode(fd)
	if err == nil && !holdsSocket(int(pid), peer) {
		err = errNotPeer
	}
	if err != nil {
		unix.Close(pidfd)
		return -1, err
	}
	return pidfd, nil
}

// holdsSocket reports whether process pid has socket inode ino open.
func holdsSocket(pid int, ino uint32) bool {
	dir, err := os.Open("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return false
	}
	defer dir.Close()
	names, err := dir.Readdirnames(maxScannedFDs + 1)
	if err != nil || len(names) > maxScannedFDs {
		return false
	}
	want := "socket:[" + strconv.FormatUint(uint64(ino), 10) + "]"
	for _, n := range names {
		if link, err := os.Readlink(dir.Name() + "/" + n); err == nil && link == want {
			return true
		}
	}
	return false
}

// The kernel's sock_diag interface for Unix sockets (linux/unix_diag.h).
const (
	udiagShowPeer = 0x4 // UDIAG_SHOW_PEER
	unixDiagPeer  = 2   // UNIX_DIAG_PEER
	noCookie      = 0xffffffff
)

// unixPeerInode asks the kernel for the inode of the other end of Unix
// socket fd.
func unixPeerInode(fd int) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, err
	}
	defer unix.Close(nl)
	req := make([]byte, unix.NLMSG_HDRLEN+24)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1)
	r := req[unix.NLMSG_HDRLEN:] // struct unix_diag_req
	r[0] = unix.AF_UNIX
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	ne.PutUint32(r[8:], uint32(st.Ino))
	ne.PutUint32(r[12:], udiagShowPeer)
	ne.PutUint32(r[16:], noCookie)
	ne.PutUint32(r[20:], noCookie)
	if err := unix.Sendto(nl, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(nl, buf, 0)
	if err != nil {
		return 0, err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR {
			return 0, fmt.Errorf("sock_diag: error reply")
		}
		if m.Header.Type != unix.SOCK_DIAG_BY_FAMILY || len(m.Data) < 16 || ne.Uint32(m.Data[4:]) != uint32(st.Ino) {
			continue
		}
		for attrs := m.Data[16:]; len(attrs) >= 4; {
			l, typ := int(ne.Uint16(attrs[0:])), ne.Uint16(attrs[2:])
			if l < 4 || l > len(attrs) {
				break
			}
			if typ == unixDiagPeer && l >= 8 {
				return ne.Uint32(attrs[4:]), nil
			}
			attrs = attrs[min((l+3)&^3, len(attrs)):]
		}
	}
	return 0, errors.New("sock_diag: no peer")
}
