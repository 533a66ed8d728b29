package socket

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/internal/privfile"
)

// Listener is the agent's socket, made by [Listen]. It holds its directory
// open, so that everything it does to the directory and the socket after
// the checks goes through that descriptor and cannot be redirected by a
// symbolic link or a renamed directory.
type Listener struct {
	*net.UnixListener
	dir     *os.File // the socket's directory, opened O_NOFOLLOW
	dirPath string   // the directory's path as checked (parents resolved)
	name    string   // the socket's name in dir
	path    string   // as configured, for messages

	mu       sync.Mutex
	dev, ino uint64 // the socket file Listen created
	unlink   bool
	closed   bool
}

// Listen creates the agent's socket at path. Its directory is created with
// mkdir, mode 0700, or 0750 when gid is not -1 (then owned by that group);
// the socket gets 0600, or 0660 for the group. The directory is opened
// without following a symbolic link and must be the agent user's own with
// no write access for group or others, under parents only root or the
// agent's user may change (privfile.OpenDir); it is then changed only
// through its descriptor (fchown, fchmod). Listen refuses a socket
// another agent is listening on; a stale socket left by a crash is
// removed. Each refusal names the path and the rule.
func Listen(path string, gid int) (*Listener, error) {
	rule := privfile.DirRule{Mode: 0o700, Forbidden: 0o022}
	sockMode := uint32(0o600)
	if gid >= 0 {
		rule.Mode, sockMode = 0o750, 0o660
	}
	dir, dirPath, err := privfile.OpenDir(filepath.Dir(path), rule)
	if err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	l := &Listener{dir: dir, dirPath: dirPath, name: filepath.Base(path), path: path, unlink: true}
	if err := l.listen(gid, rule.Mode, sockMode); err != nil {
		if l.UnixListener != nil {
			l.Close()
		} else {
			dir.Close()
		}
		return nil, err
	}
	return l, nil
}

func (l *Listener) listen(gid int, dirMode os.FileMode, sockMode uint32) error {
	dirFD := int(l.dir.Fd())
	if gid >= 0 {
		// The group must reach the socket through its directory. Through
		// the descriptor: a root agent must never chown or chmod a
		// directory someone put in place of its own.
		if err := unix.Fchown(dirFD, -1, gid); err != nil {
			return fmt.Errorf("socket directory %s: %w", l.dir.Name(), err)
		}
		if err := unix.Fchmod(dirFD, uint32(dirMode)); err != nil {
			return fmt.Errorf("socket directory %s: %w", l.dir.Name(), err)
		}
	}
	if err := l.removeStale(); err != nil {
		return err
	}
	// Bind in the directory held open, not wherever its path leads now.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: l.inDir(), Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen on %s: %w", l.path, err)
	}
	ul.SetUnlinkOnClose(false) // Close unlinks through the directory
	l.UnixListener = ul
	var st unix.Stat_t
	if err := unix.Fstatat(dirFD, l.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("socket %s: %w", l.path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("socket %s: not a socket after bind", l.path)
	}
	l.dev, l.ino = st.Dev, st.Ino
	// The entry is a socket in a directory only this user may write, so
	// fchmodat, which cannot refuse links, meets no link here.
	if err := unix.Fchmodat(dirFD, l.name, sockMode, 0); err != nil {
		return fmt.Errorf("socket %s: %w", l.path, err)
	}
	if gid >= 0 {
		if err := unix.Fchownat(dirFD, l.name, -1, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("socket %s: %w", l.path, err)
		}
	}
	return nil
}

// inDir names the socket through the open directory descriptor, for bind
// and connect, which take only paths. Without /proc it is the checked
// path, whose parents only root and the agent's user can change; the
// fstatat through the descriptor after bind then finds no socket if the
// two ever differ, and Listen fails rather than serve elsewhere.
func (l *Listener) inDir() string {
	fdDir := "/proc/self/fd/" + strconv.Itoa(int(l.dir.Fd()))
	if _, err := os.Stat(fdDir); err != nil {
		return filepath.Join(l.dirPath, l.name)
	}
	return fdDir + "/" + l.name
}

// removeStale removes a socket nobody listens on, and refuses one somebody
// does: two agents on one socket would split clients between them.
func (l *Listener) removeStale() error {
	dirFD := int(l.dir.Fd())
	var st unix.Stat_t
	err := unix.Fstatat(dirFD, l.name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", l.path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", l.path)
	}
	c, err := net.DialTimeout("unix", l.inDir(), time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("another agent is listening on %s", l.path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("socket %s: cannot tell whether it is in use: %w", l.path, err)
	}
	if err := unix.Unlinkat(dirFD, l.name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing stale socket %s: %w", l.path, err)
	}
	return nil
}

// SetUnlinkOnClose sets whether Close removes the socket file (it does by
// default).
func (l *Listener) SetUnlinkOnClose(unlink bool) {
	l.mu.Lock()
	l.unlink = unlink
	l.mu.Unlock()
}

// Close stops listening and removes the socket file: relative to the
// directory Listen opened, and only if the entry is still the socket it
// created (same device and inode), so neither a swapped directory nor a
// file put in the socket's place is removed.
func (l *Listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return l.UnixListener.Close()
	}
	l.closed = true
	err := l.UnixListener.Close()
	if l.unlink && l.ino != 0 {
		var st unix.Stat_t
		dirFD := int(l.dir.Fd())
		if unix.Fstatat(dirFD, l.name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Dev == l.dev && st.Ino == l.ino {
			unix.Unlinkat(dirFD, l.name, 0)
		}
	}
	l.dir.Close()
	return err
}
