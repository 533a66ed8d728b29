//go:build linux

package socket

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/agent"
)

// A peer's identity is read from /proc/PID, and PID is only a number: the
// process that connected may exit and its pid go to another process before
// the agent reads anything. So the kernel's own reference to the peer
// (SO_PEERPIDFD, a pidfd taken at connect time; pidfd_fallback_linux.go
// for older kernels) is held while /proc/PID is read, and afterwards the
// pidfd must still name a process that has not exited. A pid cannot be
// reused before its process exits and is reaped, so what was read then
// belonged to the peer. If the peer is gone, the identity is unknown.

// identityOf reads the identity of the peer of socket fd, whose
// SO_PEERCRED pid and uid are pid and uid. It returns nil when the peer's
// process cannot be pinned or is gone; fields it cannot read stay empty.
// It returns an error, for the caller, when the peer's executable had to
// be hashed and could not be within hashTimeout (see digestOf).
func identityOf(fd int, pid int32, uid uint32, need agent.IdentityNeed, hashTimeout time.Duration) (*agent.Identity, error) {
	if pid <= 0 { // a peer in a pid namespace the agent cannot see
		return nil, nil
	}
	pidfd, err := peerPidfd(fd, pid)
	if err != nil {
		return nil, nil
	}
	defer unix.Close(pidfd)
	id, err := readIdentity(int(pid), uid, need, hashTimeout)
	if err != nil {
		return nil, err
	}
	if !pinned(pidfd) {
		return nil, nil
	}
	return id, nil
}

// pinned reports whether the pidfd's process has not exited, so its pid
// still names it. A pidfd polls readable once its process exits; polling
// needs no permission over the process, where pidfd_send_signal with
// signal 0 would fail for an agent that is not root and a caller of
// another uid.
func pinned(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n == 0
	}
}

// readIdentity reads /proc/pid, whose process connected as uid. The
// caller checks afterwards that pid was still the peer's.
func readIdentity(pid int, uid uint32, need agent.IdentityNeed, hashTimeout time.Duration) (*agent.Identity, error) {
	proc := "/proc/" + strconv.Itoa(pid)
	id := &agent.Identity{}
	if text, err := os.ReadFile(proc + "/cgroup"); err == nil {
		if cg, ok := systemdCgroup(text, hierarchy()); ok {
			id.Cgroup, id.Unit, id.Container = cg, unitOf(cg), containerOf(cg)
		}
	}
	exe := proc + "/exe"
	var st unix.Stat_t
	if unix.Stat(exe, &st) != nil {
		return id, nil // a kernel thread, a zombie, or not ours to read
	}
	if path, err := os.Readlink(exe); err == nil && sameFile(path, &st) {
		id.Executable = path
	}
	if need >= agent.NeedDigest && id.Executable != "" {
		var err error
		if id.ExecutableSHA256, id.DigestRefused, err = digestOf(exe, &st, uid, hashTimeout); err != nil {
			return nil, err
		}
	}
	return id, nil
}

// sameFile reports whether path names the file st describes. The link
// /proc/PID/exe reads as the binary's path when it was started; if the
// binary was since deleted, renamed or replaced, the path names another
// file (or nothing) and is not the peer's executable.
func sameFile(path string, st *unix.Stat_t) bool {
	var now unix.Stat_t
	return len(path) > 0 && path[0] == '/' && unix.Stat(path, &now) == nil && now.Dev == st.Dev && now.Ino == st.Ino
}

var hierarchyOnce = sync.OnceValue(func() int {
	text, err := os.ReadFile("/proc/self/cgroup")
	if err == nil {
		if _, ok := systemdCgroup(text, hierarchyNamedSystemd); ok {
			return hierarchyNamedSystemd
		}
	}
	return hierarchyUnified
})

// hierarchy is the cgroup hierarchy this system's units live in.
func hierarchy() int { return hierarchyOnce() }

// peerPidfdSupport probes, once, that a socket pair's peer can be pinned
// the way connections' peers will be.
var peerPidfdSupport = sync.OnceValue(func() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("probing the peer's pidfd: %w", err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	pidfd, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	if err == nil {
		unix.Close(pidfd)
		return nil
	}
	// Older kernels: pidfd_open (Linux 5.3) and the connection check.
	if pidfd, err = pidfdByPID(fds[0], int32(os.Getpid())); err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return errors.New("this kernel has neither SO_PEERPIDFD (Linux 6.5) nor pidfd_open (Linux 5.3): a caller's process cannot be pinned, so its pid could be reused by another process before its identity is read")
		}
		return fmt.Errorf("this kernel has no SO_PEERPIDFD (Linux 6.5) and pinning a caller by its pid failed: %w", err)
	}
	unix.Close(pidfd)
	if os.Geteuid() != 0 && !hasCapSysPtrace() {
		return errors.New("this kernel has no SO_PEERPIDFD (Linux 6.5): the agent confirms a caller by its open files, which it may read only as root or with CAP_SYS_PTRACE")
	}
	return nil
})

// hasCapSysPtrace reports whether CAP_SYS_PTRACE is in the agent's
// effective set.
func hasCapSysPtrace() bool {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_PTRACE) != 0
		}
	}
	return false
}

// CheckIdentitySupport says why conditions on a caller's cgroup or unit
// (cgroups) or executable (executables) cannot be judged on this system,
// or returns nil if they can.
func CheckIdentitySupport(cgroups, executables bool) error {
	if !cgroups && !executables {
		return nil
	}
	if err := peerPidfdSupport(); err != nil {
		return err
	}
	if cgroups {
		text, err := os.ReadFile("/proc/self/cgroup")
		if err != nil {
			return fmt.Errorf("cannot read /proc/self/cgroup (is /proc mounted?): %w", err)
		}
		if _, ok := systemdCgroup(text, hierarchy()); !ok {
			return errors.New("no systemd cgroup hierarchy: /proc/self/cgroup shows neither a cgroup v2 line nor a v1 name=systemd one")
		}
	}
	if mode := procHidePID(); mode != "" && os.Geteuid() != 0 {
		return fmt.Errorf("/proc is mounted with hidepid=%s (systemd's ProtectProc=): the agent cannot see other users' processes; run it with ProtectProc=default", mode)
	}
	if executables {
		if _, err := os.Readlink("/proc/self/exe"); err != nil {
			return fmt.Errorf("cannot read /proc/self/exe (is /proc mounted?): %w", err)
		}
	}
	return nil
}

// procHidePID returns the hidepid= option /proc is mounted with, or ""
// when other users' processes are visible.
func procHidePID() string {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	return hidePIDOf(string(info))
}

// hidePIDOf finds /proc's hidepid option in the text of a mountinfo file.
func hidePIDOf(mountinfo string) string {
	for line := range strings.SplitSeq(mountinfo, "\n") {
		fields := strings.Fields(line)
		_, after, ok := strings.Cut(line, " - ")
		if !ok || len(fields) < 5 || fields[4] != "/proc" {
			continue
		}
		super := strings.Fields(after)
		if len(super) < 3 || super[0] != "proc" {
			continue
		}
		for opt := range strings.SplitSeq(super[2], ",") {
			if v, ok := strings.CutPrefix(opt, "hidepid="); ok && v != "0" && v != "off" {
				return v
			}
		}
	}
	return ""
}
