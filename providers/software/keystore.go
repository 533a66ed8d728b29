package software

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/memlock"
	"github.com/hmac-agent/hmac-agent/internal/privfile"
	"github.com/hmac-agent/hmac-agent/providers"
)

const keyFileSuffix = ".key"

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

// loadKeys reads every key file in dir, keyed by the file's stem: the
// key's name for version 1, NAME@N for version N (see versions.go). Any loose, unreadable or corrupt
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
		base, _, err := keyStem(name)
		if err != nil {
			for _, k := range keys {
				k.destroy()
			}
			return nil, nil, fmt.Errorf("software keystore: %s: %w", path, err)
		}
		k, lerr, err := readKeyFile(path, base)
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
	file, err := readLocked(path)
	if err != nil {
		return nil, nil, fmt.Errorf("software keystore: %w", err)
	}
	defer file.Destroy()
	created, secret, err := parseKeyFile(file.Bytes())
	if err != nil {
		return nil, nil, fmt.Errorf("software keystore: %s: not a key file: %w", path, err)
	}
	defer secret.Destroy()
	k, lockErr = newKey(name, secret.Bytes(), created)
	if k == nil {
		return nil, nil, fmt.Errorf("software keystore: %s: %w", path, lockErr)
	}
	return k, lockErr, nil
}

// readLocked reads a private key file into locked memory: its base64
// text is as secret as the key. It refuses a symlink, and a file that
// privfile.Check refuses, checked on the open descriptor.
func readLocked(path string) (*memlock.Secret, error) {
	f, info, err := privfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if info.Size() > maxKeyFileSize {
		return nil, fmt.Errorf("%s: %d bytes is too large for a key file", path, info.Size())
	}
	buf, _ := memlock.Alloc(int(info.Size()))
	if buf == nil {
		return nil, fmt.Errorf("%s: no memory to read it into", path)
	}
	if _, err := io.ReadFull(f, buf.Bytes()); err != nil {
		buf.Destroy()
		return nil, err
	}
	return buf, nil
}

// maxKeyFileSize bounds a key file: base64 of MaxKeyLength and the rest.
const maxKeyFileSize = 4*MaxKeyLength/3 + 256

// The key file is JSON in exactly this layout, which encoding/json also
// wrote for earlier versions:
//
//	{"version":1,"created":"2026-11-30T09:00:00Z","secret":"BASE64"}
//
// It is parsed and formatted by hand because encoding/json would leave
// copies of the base64 text in its buffers on the heap.
const (
	keyFilePrefix = `{"version":1,"created":"`
	keyFileMiddle = `","secret":`
)

// parseKeyFile decodes a key file held in locked memory. The secret is
// decoded straight into locked memory; nothing secret is copied
// elsewhere.
func parseKeyFile(data []byte) (created time.Time, secret *memlock.Secret, err error) {
	rest, ok := bytes.CutPrefix(data, []byte(keyFilePrefix))
	if !ok {
		return time.Time{}, nil, errors.New(`want {"version":1,"created":...`)
	}
	i := bytes.Index(rest, []byte(keyFileMiddle))
	if i < 0 || i > 64 {
		return time.Time{}, nil, errors.New("no creation time and secret")
	}
	if err := created.UnmarshalText(rest[:i]); err != nil {
		return time.Time{}, nil, fmt.Errorf("creation time: %w", err)
	}
	value := bytes.TrimSuffix(rest[i+len(keyFileMiddle):], []byte("\n"))
	value, ok = bytes.CutSuffix(value, []byte("}"))
	if !ok {
		return time.Time{}, nil, errors.New("no closing brace")
	}
	if string(value) == "null" { // an empty key, as encoding/json wrote it
		value = []byte(`""`)
	}
	if len(value) < 2 || value[0] != '"' || value[len(value)-1] != '"' {
		return time.Time{}, nil, errors.New("secret is not a string")
	}
	value = value[1 : len(value)-1]
	secret, _ = memlock.Alloc(base64.StdEncoding.DecodedLen(len(value)))
	if secret == nil {
		return time.Time{}, nil, errors.New("no memory to decode the secret into")
	}
	n, err := base64.StdEncoding.Strict().Decode(secret.Bytes(), value)
	if err != nil {
		secret.Destroy()
		return time.Time{}, nil, errors.New("secret is not base64")
	}
	secret.Truncate(n)
	return created, secret, nil
}

// formatKeyFile writes a key file's text into locked memory.
func formatKeyFile(secret []byte, created time.Time) (*memlock.Secret, error) {
	ts, err := created.MarshalText()
	if err != nil {
		return nil, err
	}
	n := len(keyFilePrefix) + len(ts) + len(keyFileMiddle) + 2 + base64.StdEncoding.EncodedLen(len(secret)) + 1
	buf, _ := memlock.Alloc(n)
	if buf == nil {
		return nil, errors.New("no memory to write the key file in")
	}
	b := buf.Bytes()[:0]
	b = append(b, keyFilePrefix...)
	b = append(b, ts...)
	b = append(b, keyFileMiddle...)
	b = append(b, '"')
	b = base64.StdEncoding.AppendEncode(b, secret)
	b = append(b, '"', '}')
	if len(b) != n {
		buf.Destroy()
		return nil, errors.New("key file text did not fit in its locked memory")
	}
	return buf, nil
}

// writeKeyFile stores a new key atomically (see createKeyFile). It fails
// with ErrKeyExists rather than replace a key.
func writeKeyFile(dir, name string, secret []byte, created time.Time) error {
	text, err := formatKeyFile(secret, created)
	if err != nil {
		return fmt.Errorf("software keystore: %w", err)
	}
	defer text.Destroy()
	if err := createKeyFile(dir, name+keyFileSuffix, text.Bytes()); err != nil {
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
