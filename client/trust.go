package client

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

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
			if uid == 0 {
				return checkRootPath(path, trusted)
			}
			return nil
		}
	}
	return fmt.Errorf("the server at %s runs as uid %d (pid %d), which is not root, this user (uid %d) or $%s: %w; nothing was sent to it",
		path, cred.Uid, cred.Pid, os.Getuid(), paths.AgentUIDEnv, ErrUntrustedAgent)
}

// maxLinks bounds the symbolic links followed on the way to the socket,
// as the kernel's own limit does.
const maxLinks = 40

// checkRootPath vets the way to a socket root listens on. Root's
// credentials prove less than another uid's: they are those of every
// socket systemd makes, among them sockets it hands to services that run
// as other users, so a user who runs such a service (or has broken into
// one) could link its socket where a client looks for the agent, as
// /tmp/hmac-agent-$UID/agent.sock. So the path must be one that only root
// and trusted users could have laid: every directory and symbolic link on
// the way from /, and the links themselves, owned by root or a trusted
// uid, and no directory writable by others unless sticky (like /tmp,
// where others may add entries but not replace ours). The socket's own
// owner is not judged: its listener was (systemd's SocketUser= sets it).
func checkRootPath(path string, trusted []uint32) error {
	// Not filepath.Abs, which would clean "link/.." away: the kernel
	// resolves link first, and so does the walk.
	abs := path
	if !filepath.IsAbs(abs) {
		wd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("the agent at %s: %w: %v", path, ErrUntrustedAgent, err)
		}
		abs = wd + "/" + path
	}
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("the agent at %s runs as root, but %s: anyone who could do that could have put another server there: %w; nothing was sent to it",
			path, fmt.Sprintf(format, args...), ErrUntrustedAgent)
	}
	ok := func(uid uint32) bool { return slices.Contains(trusted, uid) }
	dir, pending, links := "/", strings.Split(abs, "/"), 0
	// more reports whether a name is left to walk; next takes it.
	more := func() bool {
		return slices.ContainsFunc(pending, func(n string) bool { return n != "" && n != "." })
	}
	next := func() string {
		for {
			n := pending[0]
			pending = pending[1:]
			if n != "" && n != "." {
				return n
			}
		}
	}
	for {
		var st unix.Stat_t
		if err := unix.Lstat(dir, &st); err != nil {
			return refuse("%s cannot be checked (%v)", dir, err)
		}
		switch {
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return refuse("%s on the way is not a directory", dir)
		case !ok(st.Uid):
			return refuse("the directory %s on the way is owned by uid %d", dir, st.Uid)
		case st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
			return refuse("the directory %s on the way (mode %04o) is writable by others than its owner", dir, st.Mode&0o7777)
		}
		if !more() {
			return refuse("the path names a directory")
		}
		name := next()
		if name == ".." {
			dir = filepath.Dir(dir)
			continue
		}
		p := filepath.Join(dir, name)
		if err := unix.Lstat(p, &st); err != nil {
			return refuse("%s cannot be checked (%v)", p, err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			if !ok(st.Uid) {
				return refuse("the symbolic link %s on the way is owned by uid %d", p, st.Uid)
			}
			if links++; links > maxLinks {
				return refuse("too many symbolic links on the way")
			}
			target, err := os.Readlink(p)
			if err != nil {
				return refuse("%s cannot be read (%v)", p, err)
			}
			if filepath.IsAbs(target) {
				dir = "/"
			}
			pending = append(strings.Split(target, "/"), pending...)
			continue
		}
		if !more() {
			return nil // the socket itself
		}
		dir = p
	}
}
