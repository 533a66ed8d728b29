//go:build unix

package config

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// checkTrusted refuses a configuration file that a user other than root
// and the agent's own could change, checked on the open descriptor and
// on every directory above the file's real path. The file chooses the
// PKCS#11 module the agent loads and who may use each key: whoever could
// write it, or rename another file into its place, would at the next
// start or reload run code as the agent or give themselves its keys.
// Reading it is not guarded: it holds no secret.
func checkTrusted(f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	euid := uint32(os.Geteuid())
	switch {
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", path)
	case st.Uid != 0 && st.Uid != euid:
		return fmt.Errorf("%s is owned by uid %d: the configuration must belong to root or the agent's user (uid %d)", path, st.Uid, euid)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("%s has mode %04o: group and others must not be able to write the configuration (chmod go-w %s)", path, st.Mode&0o7777, path)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return err
	}
	for dir := filepath.Dir(real); ; dir = filepath.Dir(dir) {
		var ds syscall.Stat_t
		if err := syscall.Stat(dir, &ds); err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
		switch {
		case ds.Uid != 0 && ds.Uid != euid:
			return fmt.Errorf("%s, a directory above the configuration, is owned by uid %d: it must belong to root or the agent's user (uid %d)", dir, ds.Uid, euid)
		case ds.Mode&0o022 != 0 && ds.Mode&syscall.S_ISVTX == 0:
			return fmt.Errorf("%s, a directory above the configuration, has mode %04o: it must not be writable by group or others unless sticky, like /tmp (chmod go-w %s)", dir, ds.Mode&0o7777, dir)
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}
