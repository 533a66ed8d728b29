package software

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/privfile"
	"github.com/hmac-agent/hmac-agent/providers"
)

const keyFileSuffix = ".key"

// keyFile is the on-disk form of one key.
type keyFile struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	Secret  []byte    `json:"secret"` // base64 in JSON
}

// openDir creates dir (0700) if it is missing, checks it and its parents
// (privfile.OpenDir: no symbolic link, private, parents only the agent's
// user or root may change) and returns the path to use from then on.
func openDir(dir string) (string, error) {
	real, err := privfile.CheckDir(dir, privfile.PrivateDir)
	if err != nil {
		return "", fmt.Errorf("software keystore: %w", err)
	}
	return real, nil
}

// loadKeys reads every key file in dir. Any loose, unreadable or corrupt
// file stops the load: serving with part of the keystore silently missing
// would turn one broken file into failures that are hard to trace. lockErr
// is the first failure to lock key bytes in memory, if any.
func loadKeys(dir string) (keys map[string]*key, lockErr error, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("software keystore: %w", err)
	}
	keys = make(map[string]*key)
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), keyFileSuffix)
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue // temporary files and anything that is not ours
		}
		path := filepath.Join(dir, e.Name())
		if err := providers.CheckKeyName(name); err != nil {
			return nil, nil, fmt.Errorf("software keystore: %s: %w", path, err)
		}
		k, lerr, err := readKeyFile(path, name)
		if err != nil {
			for _, k := range keys {
				k.destroy()
			}
			return nil, nil, err
		}
		if lockErr == nil {
			lockErr = lerr
		}
		keys[name] = k
	}
	return keys, lockErr, nil
}

func readKeyFile(path, name string) (k *key, lockErr, err error) {
	data, err := privfile.Read(path)
	if err != nil {
		return nil, nil, fmt.Errorf("software keystore: %w", err)
	}
	defer clear(data)
	var kf keyFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return nil, nil, fmt.Errorf("software keystore: %s: not a key file: %w", path, err)
	}
	defer clear(kf.Secret)
	if kf.Version != 1 {
		return nil, nil, fmt.Errorf("software keystore: %s: unknown key file version %d", path, kf.Version)
	}
	k, lockErr = newKey(name, kf.Secret, kf.Created)
	if k == nil {
		return nil, nil, fmt.Errorf("software keystore: %s: %w", path, lockErr)
	}
	return k, lockErr, nil
}

// writeKeyFile stores a new key atomically. It fails with ErrKeyExists
// rather than replace a key.
func writeKeyFile(dir, name string, secret []byte, created time.Time) error {
	data, err := json.Marshal(keyFile{Version: 1, Created: created, Secret: secret})
	if err != nil {
		return err
	}
	defer clear(data)
	if err := privfile.Create(filepath.Join(dir, name+keyFileSuffix), data); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("software keystore: %q: %w", name, providers.ErrKeyExists)
		}
		return fmt.Errorf("software keystore: %w", err)
	}
	return nil
}

func removeKeyFile(dir, name string) error {
	if err := privfile.Remove(filepath.Join(dir, name+keyFileSuffix)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("software keystore: %q: %w", name, providers.ErrKeyNotFound)
		}
		return fmt.Errorf("software keystore: %w", err)
	}
	return nil
}
