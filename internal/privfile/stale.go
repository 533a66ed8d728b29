package privfile

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// TempMarker is in the name of every temporary file Create writes:
// ".NAME.tmp-RANDOM", beside NAME, until it is linked into place.
const TempMarker = ".tmp-"

// IsTemp reports whether a directory entry's name is one of Create's
// temporary files.
func IsTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, TempMarker)
}

// RemoveStale removes the temporary files a crash left in dir (entries
// IsTemp names that are not directories) and returns their names. Such a
// file holds a whole key or key blob that was never linked into place; it
// is removed at start rather than left readable on disk. Call it before
// serving: a write in progress in another process using the same
// directory would lose its file and fail.
//
// The directory is opened without following a link, and entries are
// removed relative to it, so a link planted in dir's place cannot send
// the removals elsewhere.
func RemoveStale(dir string) ([]string, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	d := os.NewFile(uintptr(fd), dir)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	var removed []string
	for _, name := range names {
		if !IsTemp(name) {
			continue
		}
		err := unix.Unlinkat(fd, name, 0)
		if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.ENOENT) {
			continue // not a file of ours; or gone already
		}
		if err != nil {
			return removed, fmt.Errorf("removing stale temporary file %s/%s: %w", dir, name, err)
		}
		removed = append(removed, name)
	}
	if len(removed) > 0 {
		if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
			return removed, fmt.Errorf("sync %s: %w", dir, err)
		}
	}
	return removed, nil
}
