// Package privfile keeps files that only the agent's user may read: key
// stores, TPM key blobs and PIN files. It refuses a directory or file that
// group or others may access, that another user owns, or that is a
// symbolic link, and a directory under parents others may change, as ssh
// refuses a loose private key ([OpenDir], [ReadSecret]); it writes files
// atomically and removes the temporary files a crash left ([RemoveStale]).
//
// Its functions keep no state and are safe for concurrent use.
package privfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrExist is returned by Create when the file exists.
var ErrExist = fs.ErrExist

// Check refuses path unless it is a directory (wantDir) or regular file
// with no access for group or others, owned by the effective uid.
func Check(path string, info fs.FileInfo, wantDir bool) error {
	switch {
	case wantDir && !info.IsDir():
		return fmt.Errorf("%s is not a directory", path)
	case !wantDir && !info.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", path)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		want := "600"
		if wantDir {
			want = "700"
		}
		return fmt.Errorf("%s has mode %04o: group and others must have no access (chmod %s %s)", path, perm, want, path)
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not by the agent's uid %d", path, st.Uid, os.Geteuid())
	}
	return nil
}

// Open opens a file for reading after checking, on the open descriptor,
// that it is private. A symbolic link is refused, not followed.
func Open(path string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, nil, fmt.Errorf("%s is a symbolic link: the agent does not follow links for its files", path)
	}
	if err != nil {
		return nil, nil, err
	}
	info, err := f.Stat()
	if err == nil {
		err = Check(path, info, false)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, info, nil
}

// Read reads a file after checking it is private, as Open does.
func Read(path string) ([]byte, error) {
	f, info, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data := make([]byte, info.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, err
	}
	return data, nil
}

// Create writes data to a new file at path, mode 0600, atomically: a
// crash leaves either no file or the whole file. It fails with ErrExist
// rather than replace a file, because a key overwritten by mistake is lost
// for good.
func Create(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // a no-op once linked
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// A hard link fails if the name exists, which makes creation atomic
	// and exclusive, unlike rename.
	if err := os.Link(tmpName, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// Remove deletes path and syncs its directory. A missing file is
// fs.ErrNotExist.
func Remove(path string) error {
	if err := os.Remove(path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir makes a directory's entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
