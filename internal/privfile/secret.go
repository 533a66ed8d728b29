package privfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// maxSecret bounds a PIN or auth value file: anything larger is not one.
const maxSecret = 64 << 10

// ReadSecret reads a PIN or auth value file. The file must be a regular
// file owned by the agent's user with mode 0600 or stricter; it is opened
// with O_NOFOLLOW and checked with fstat on the open descriptor, so a
// symbolic link is refused and the file checked is the file read. Each
// refusal names the path and the rule.
func ReadSecret(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("%s is a symbolic link: a secret file is never followed through a link; name the file itself", path)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	perm := fs.FileMode(st.Mode) & fs.ModePerm
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return nil, fmt.Errorf("%s is not a regular file", path)
	case int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("%s is owned by uid %d: a secret file must be owned by the agent's user (uid %d)", path, st.Uid, os.Geteuid())
	case perm&0o177 != 0:
		return nil, fmt.Errorf("%s has mode %04o: a secret file must be mode 0600 or stricter (chmod 600 %s)", path, perm, path)
	case st.Size > maxSecret:
		return nil, fmt.Errorf("%s has %d bytes: too large for a secret file", path, st.Size)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSecret+1))
	if err != nil {
		clear(data)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return data, nil
}
