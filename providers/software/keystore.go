package software

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

const keyFileSuffix = ".key"

// keyFile is the on-disk form of one key.
type keyFile struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	Secret  []byte    `json:"secret"` // base64 in JSON
}

// checkPrivate refuses a path that group or others may access or that
// another user owns. wantDir says which kind of file it must be.
func checkPrivate(path string, info fs.FileInfo, wantDir bool) error {
	if wantDir != info.IsDir() {
		if wantDir {
			return fmt.Errorf("software keystore: %s is not a directory", path)
		}
		return fmt.Errorf("software keystore: %s is not a regular file", path)
	}
	if !wantDir && !info.Mode().IsRegular() {
		return fmt.Errorf("software keystore: %s is not a regular file", path)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("software keystore: %s has mode %04o: group and others must have no access (chmod %s %s)",
			path, perm, map[bool]string{true: "700", false: "600"}[wantDir], path)
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("software keystore: %s is owned by uid %d, not by the agent's uid %d", path, st.Uid, os.Geteuid())
	}
	return nil
}

// openDir creates dir (0700) if it is missing and checks it is private.
func openDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("software keystore: %w", err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("software keystore: %w", err)
	}
	return checkPrivate(dir, info, true)
}

// loadKeys reads every key file in dir. Any loose, unreadable or corrupt
// file stops the load: serving with part of the keystore silently missing
// would turn one broken file into failures that are hard to trace.
func loadKeys(dir string) (map[string]*key, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("software keystore: %w", err)
	}
	keys := make(map[string]*key)
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), keyFileSuffix)
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue // temporary files and anything that is not ours
		}
		path := filepath.Join(dir, e.Name())
		if err := providers.CheckKeyName(name); err != nil {
			return nil, fmt.Errorf("software keystore: %s: %w", path, err)
		}
		k, err := readKeyFile(path, name)
		if err != nil {
			return nil, err
		}
		keys[name] = k
	}
	return keys, nil
}

func readKeyFile(path, name string) (*key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("software keystore: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("software keystore: %w", err)
	}
	if err := checkPrivate(path, info, false); err != nil {
		return nil, err
	}
	var kf keyFile
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return nil, fmt.Errorf("software keystore: %s: not a key file: %w", path, err)
	}
	if kf.Version != 1 {
		return nil, fmt.Errorf("software keystore: %s: unknown key file version %d", path, kf.Version)
	}
	return newKey(name, kf.Secret, kf.Created), nil
}

// writeKeyFile stores a new key atomically. It fails with ErrKeyExists
// rather than replace a key: a key overwritten by mistake is lost for good.
func writeKeyFile(dir, name string, secret []byte, created time.Time) error {
	path := filepath.Join(dir, name+keyFileSuffix)
	data, err := json.Marshal(keyFile{Version: 1, Created: created, Secret: secret})
	if err != nil {
		return err
	}
	defer clear(data)
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("software keystore: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // no-op once linked
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("software keystore: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("software keystore: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("software keystore: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("software keystore: %w", err)
	}
	// A hard link fails if the name exists, which makes creation atomic
	// and exclusive, unlike rename.
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("software keystore: %q: %w", name, providers.ErrKeyExists)
		}
		return fmt.Errorf("software keystore: %w", err)
	}
	return syncDir(dir)
}

func removeKeyFile(dir, name string) error {
	path := filepath.Join(dir, name+keyFileSuffix)
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("software keystore: %q: %w", name, providers.ErrKeyNotFound)
		}
		return fmt.Errorf("software keystore: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("software keystore: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("software keystore: sync %s: %w", dir, err)
	}
	return nil
}
