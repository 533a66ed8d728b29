package privfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DirRule says how private a directory of the agent must be.
type DirRule struct {
	// Mode is a new directory's mode.
	Mode fs.FileMode
	// Forbidden are the permission bits an existing directory must not
	// have: 0o077 for a keystore (no access for group or others), 0o022
	// for the socket's directory (which a socket group may enter).
	Forbidden fs.FileMode
}

var (
	// PrivateDir is a keystore's or TPM state directory's rule.
	PrivateDir = DirRule{Mode: 0o700, Forbidden: 0o077}
)

// OpenDir opens the directory at path for the agent, creating it (and
// any missing parents, 0700) with mkdir if it does not exist, and returns
// it open together with the path to use from then on: path with its
// parent resolved, so that later uses cannot be redirected by a symbolic
// link changed afterwards. It refuses, with an error naming the path and
// the rule:
//
//   - a symbolic link in place of the directory (it is opened with
//     O_NOFOLLOW|O_DIRECTORY; a link is never followed),
//   - anything but a directory, or a directory owned by another user than
//     the agent's, or one with any of rule.Forbidden's permission bits,
//   - a parent, up to /, that is not owned by root or the agent's user,
//     or that others may write, as OpenSSH's StrictModes does. A sticky
//     directory such as /tmp is the one exception: others may create
//     entries in it but cannot rename or remove ours, and every entry on
//     the path below it must itself be owned by root or the agent's user
//     (checked), so another user can at most take the name first, which
//     is refused by the owner check.
//
// The caller owns the returned file; checks against it (fstat) and
// changes through it (fchown, fchmod) cannot be redirected.
func OpenDir(path string, rule DirRule) (*os.File, string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", err
	}
	parent, err := makeParents(filepath.Dir(abs))
	if err != nil {
		return nil, "", err
	}
	real := filepath.Join(parent, filepath.Base(abs))
	if err := os.Mkdir(real, rule.Mode); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, "", fmt.Errorf("%s: %w", real, err)
	}
	fd, err := unix.Open(real, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOTDIR) { // what O_DIRECTORY|O_NOFOLLOW says of a link
		if fi, lerr := os.Lstat(real); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			err = unix.ELOOP
		}
	}
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, "", fmt.Errorf("%s is a symbolic link: the agent does not follow links for its directories; use the real path", real)
	case errors.Is(err, unix.ENOTDIR):
		return nil, "", fmt.Errorf("%s is not a directory", real)
	case err != nil:
		return nil, "", fmt.Errorf("%s: %w", real, err)
	}
	f := os.NewFile(uintptr(fd), real)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, "", fmt.Errorf("%s: %w", real, err)
	}
	if err := checkOwnDir(real, &st, rule.Forbidden); err != nil {
		f.Close()
		return nil, "", err
	}
	return f, real, nil
}

// CheckDir is OpenDir for a caller that only needs the directory checked
// (and created): it returns the path to use.
func CheckDir(path string, rule DirRule) (string, error) {
	f, real, err := OpenDir(path, rule)
	if err != nil {
		return "", err
	}
	f.Close()
	return real, nil
}

// checkOwnDir applies the rule for the agent's own directory to its
// fstat.
func checkOwnDir(path string, st *unix.Stat_t, forbidden fs.FileMode) error {
	perm := fs.FileMode(st.Mode) & fs.ModePerm
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%s is not a directory", path)
	case int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%s is owned by uid %d, not by the agent's uid %d: the agent uses only directories of its own", path, st.Uid, os.Geteuid())
	case perm&forbidden != 0:
		what := "group and others must have no access"
		if forbidden&0o055 == 0 {
			what = "it must not be writable by group or others"
		}
		return fmt.Errorf("%s has mode %04o: %s (chmod %o %s)", path, perm, what, 0o777&^forbidden&0o750, path)
	}
	return nil
}

// makeParents resolves dir (following links in it, which checkParents
// then vets by their targets), creates what is missing below its deepest
// existing ancestor with mkdir (0700), checks the whole chain and returns
// the resolved path.
func makeParents(dir string) (string, error) {
	var missing []string
	existing := dir
	for {
		if _, err := os.Lstat(existing); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%s: %w", existing, err)
		}
		missing = append(missing, filepath.Base(existing))
		up := filepath.Dir(existing)
		if up == existing {
			break
		}
		existing = up
	}
	real, err := filepath.EvalSymlinks(existing)
	if err != nil {
		return "", fmt.Errorf("%s: %w", existing, err)
	}
	if err := checkParents(real); err != nil {
		return "", err
	}
	for i := len(missing) - 1; i >= 0; i-- {
		real = filepath.Join(real, missing[i])
		if err := os.Mkdir(real, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("%s: %w", real, err)
		}
		// Whatever is there now must be a directory of ours or root's:
		// not a link planted between the check and mkdir.
		if err := checkParent(real); err != nil {
			return "", err
		}
	}
	return real, nil
}

// checkParents applies checkParent to dir and each directory above it.
func checkParents(dir string) error {
	for {
		if err := checkParent(dir); err != nil {
			return err
		}
		up := filepath.Dir(dir)
		if up == dir {
			return nil
		}
		dir = up
	}
}

// checkParent refuses a directory on the way to the agent's own that
// someone other than root or the agent's user could change.
func checkParent(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s, a parent of the agent's directory, is not a directory (a symbolic link replaced it?)", dir)
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s, a parent of the agent's directory, is owned by uid %d: parents must belong to root or the agent's user (uid %d)", dir, st.Uid, os.Geteuid())
	}
	if st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
		return fmt.Errorf("%s, a parent of the agent's directory, has mode %04o: parents must not be writable by group or others unless sticky, like /tmp (chmod go-w %s)", dir, st.Mode&0o7777, dir)
	}
	return nil
}
