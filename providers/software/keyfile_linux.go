package software

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/internal/privfile"
)

// createKeyFile writes data to a new file dir/name, mode 0600, so that a
// crash at any moment leaves either no file or the whole one, and never
// a readable partial or temporary copy of the key. The data goes into
// an unnamed O_TMPFILE inode that only gets a name, by linkat, once it
// is complete and synced; a crash before that leaves no name, and the
// kernel frees the inode. A filesystem without O_TMPFILE gets
// privfile.Create's named temporary file (.NAME.tmp-*), which the agent
// removes at start. linkat fails if the name exists, so a key is never
// replaced.
func createKeyFile(dir, name string, data []byte) error {
	path := filepath.Join(dir, name)
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
		return privfile.Create(path, data)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	// Linking through /proc/self/fd needs no privilege, unlike
	// AT_EMPTY_PATH.
	if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create %s: %w", path, os.ErrExist)
		}
		return fmt.Errorf("link %s: %w", path, err)
	}
	return privfile.SyncDir(dir)
}
