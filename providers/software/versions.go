package software

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/memlock"
	"github.com/hmac-agent/hmac-agent/internal/privfile"
	"github.com/hmac-agent/hmac-agent/providers"
)

// Versions on disk. Version 1 of a key is NAME.key, as keys were stored
// before versions existed, so an old keystore loads unchanged; version N
// is NAME@N.key ('@' is not allowed in a key name, so the two never
// collide). The key files are the truth about which versions exist and
// which is current (the highest), and each is created exclusively, so
// two agents rotating one keystore at once can never make two versions
// with one number: the second link fails and it takes the next number.
// Retiring writes a marker NAME@N.retired, also created exclusively and
// never rewritten, so no update of a shared record can be lost; a
// version whose marker is there and whose key file is gone was destroyed.

const retiredSuffix = ".retired"

var _ providers.Versioner = (*Provider)(nil)

// versionFile is the file name of version n of name.
func versionFile(name string, n int) string {
	if n == 1 {
		return name + keyFileSuffix
	}
	return name + "@" + strconv.Itoa(n) + keyFileSuffix
}

func retiredFile(name string, n int) string {
	return name + "@" + strconv.Itoa(n) + retiredSuffix
}

// parseStem splits a key file's or marker's stem into the key's name and
// version. NAME@1 is valid only for a marker: version 1's key file is
// NAME.key, which keyStem checks.
func parseStem(stem string) (name string, n int, err error) {
	name, num, versioned := strings.Cut(stem, "@")
	if err := providers.CheckKeyName(name); err != nil {
		return "", 0, err
	}
	if !versioned {
		return name, 1, nil
	}
	n, err = strconv.Atoi(num)
	if err != nil || n < 1 || strconv.Itoa(n) != num {
		return "", 0, fmt.Errorf("%w: %q is not a key version", providers.ErrInvalidArgument, stem)
	}
	return name, n, nil
}

// keyStem is parseStem for a key file's stem.
func keyStem(stem string) (name string, n int, err error) {
	name, n, err = parseStem(stem)
	if err == nil && versionFile(name, n) != stem+keyFileSuffix {
		return "", 0, fmt.Errorf("%w: %q: version 1 is %s", providers.ErrInvalidArgument, stem, versionFile(name, 1))
	}
	return name, n, err
}

// retiredRecord is a retired marker's content. The times of a version are
// kept there because a destroyed version's key file, which held its
// creation time, is gone.
type retiredRecord struct {
	Created    time.Time `json:"created,omitzero"`
	Superseded time.Time `json:"superseded,omitzero"`
	Retired    time.Time `json:"retired"`
}

// onDisk is what the keystore directory says about one key's versions.
type onDisk struct {
	files   map[int]bool
	retired map[int]retiredRecord
}

func (d onDisk) highest() int {
	n := 0
	for v := range d.files {
		n = max(n, v)
	}
	for v := range d.retired {
		n = max(n, v)
	}
	return n
}

// current is the highest version that has a key file; zero if none.
func (d onDisk) current() int {
	n := 0
	for v := range d.files {
		n = max(n, v)
	}
	return n
}

// scan reads which versions of name the directory holds. It reads the
// directory again on each call, so that versions another agent made or
// retired in a shared keystore are seen.
func scan(dir, name string) (onDisk, error) {
	d := onDisk{files: make(map[int]bool), retired: make(map[int]retiredRecord)}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return d, fmt.Errorf("software keystore: %w", err)
	}
	for _, e := range entries {
		fn := e.Name()
		if !strings.HasPrefix(fn, name) || strings.HasPrefix(fn, ".") {
			continue
		}
		if stem, ok := strings.CutSuffix(fn, keyFileSuffix); ok {
			if base, n, err := keyStem(stem); err == nil && base == name {
				d.files[n] = true
			}
			continue
		}
		if stem, ok := strings.CutSuffix(fn, retiredSuffix); ok {
			base, n, err := parseStem(stem)
			if err != nil || base != name {
				continue
			}
			data, err := privfile.Read(filepath.Join(dir, fn))
			if err != nil {
				return d, fmt.Errorf("software keystore: %w", err)
			}
			var rec retiredRecord
			if err := json.Unmarshal(data, &rec); err != nil {
				return d, fmt.Errorf("software keystore: %s: %w", fn, err)
			}
			d.retired[n] = rec
		}
	}
	return d, nil
}

// syncLocked brings the loaded versions of name in line with the
// directory: versions made elsewhere are loaded, versions destroyed
// elsewhere are dropped, and the current one is the highest.
func (p *Provider) syncLocked(name string) (onDisk, error) {
	d, err := scan(p.dir, name)
	if err != nil {
		return d, err
	}
	loaded := p.all[name]
	if len(d.files) == 0 {
		if len(loaded) > 0 {
			for _, k := range loaded {
				k.destroy()
			}
			delete(p.all, name)
			delete(p.keys, name)
		}
		return d, fmt.Errorf("software: %q: %w", name, providers.ErrKeyNotFound)
	}
	if loaded == nil {
		loaded = make(map[int]*key)
		p.all[name] = loaded
	}
	for n, k := range loaded {
		if !d.files[n] {
			k.destroy()
			delete(loaded, n)
		}
	}
	for n := range d.files {
		if loaded[n] != nil {
			continue
		}
		k, lockErr, err := readKeyFile(filepath.Join(p.dir, versionFile(name, n)), name)
		if errors.Is(err, fs.ErrNotExist) {
			delete(d.files, n) // destroyed between the scan and the read
			continue
		}
		if err != nil {
			return d, err
		}
		if p.lockErr == nil {
			p.lockErr = lockErr
		}
		loaded[n] = k
	}
	p.keys[name] = loaded[d.current()]
	return d, nil
}

// Versions returns the key's versions, oldest first, read again from the
// keystore directory. Errors wrap ErrKeyNotFound or ErrClosed.
func (p *Provider) Versions(ctx context.Context, name string) ([]providers.VersionInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("software: %w", providers.ErrClosed)
	}
	d, err := p.syncLocked(name)
	if err != nil {
		return nil, err
	}
	return p.infosLocked(name, d), nil
}

func (p *Provider) infosLocked(name string, d onDisk) []providers.VersionInfo {
	current := d.current()
	created := func(n int) time.Time {
		if k := p.all[name][n]; k != nil {
			return k.created
		}
		return d.retired[n].Created
	}
	var infos []providers.VersionInfo
	for n := 1; n <= d.highest(); n++ {
		rec, retired := d.retired[n]
		if !d.files[n] && !retired {
			continue // a number lost to a failed rotation
		}
		info := providers.VersionInfo{Version: n, Created: created(n), Retired: rec.Retired}
		switch {
		case !d.files[n]:
			info.State = providers.VersionDestroyed
		case retired:
			info.State = providers.VersionRetired
		case n == current:
			info.State = providers.VersionCurrent
		default:
			info.State = providers.VersionPrevious
		}
		if n != current {
			info.Superseded = rec.Superseded
			for m := n + 1; m <= d.highest() && info.Superseded.IsZero(); m++ {
				info.Superseded = created(m)
			}
		}
		infos = append(infos, info)
	}
	return infos
}

// KeyVersion returns version n of the key, retired or not. Errors wrap
// ErrKeyNotFound (no such key or version, or it was destroyed) or
// ErrClosed.
func (p *Provider) KeyVersion(ctx context.Context, name string, n int) (providers.Key, error) {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return nil, fmt.Errorf("software: %w", providers.ErrClosed)
	}
	k := p.all[name][n]
	p.mu.RUnlock()
	if k != nil {
		return k, nil
	}
	// Perhaps made by another agent since this one last looked.
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("software: %w", providers.ErrClosed)
	}
	if _, err := p.syncLocked(name); err != nil {
		return nil, err
	}
	if k := p.all[name][n]; k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("software: %q version %d: %w", name, n, providers.ErrKeyNotFound)
}

// RotateKey adds a version, generated from crypto/rand (length bytes; 0
// means DefaultKeyLength) or imported from secret, and makes it current.
// Errors wrap ErrKeyNotFound, ErrInvalidArgument or ErrClosed.
func (p *Provider) RotateKey(ctx context.Context, name string, secret []byte, length int) (providers.VersionInfo, error) {
	if secret == nil {
		if length == 0 {
			length = DefaultKeyLength
		}
		if length < 1 || length > MaxKeyLength {
			return providers.VersionInfo{}, fmt.Errorf("software: key length %d: %w: must be 1 to %d bytes", length, providers.ErrInvalidArgument, MaxKeyLength)
		}
		buf, err := memlock.Alloc(length)
		if buf == nil {
			return providers.VersionInfo{}, fmt.Errorf("software: %w", err)
		}
		defer buf.Destroy()
		rand.Read(buf.Bytes())
		secret = buf.Bytes()
	} else if len(secret) > MaxKeyLength {
		return providers.VersionInfo{}, fmt.Errorf("software: key of %d bytes: %w: at most %d bytes", len(secret), providers.ErrInvalidArgument, MaxKeyLength)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return providers.VersionInfo{}, fmt.Errorf("software: %w", providers.ErrClosed)
	}
	d, err := p.syncLocked(name)
	if err != nil {
		return providers.VersionInfo{}, err
	}
	created := time.Now().UTC().Truncate(time.Second)
	text, err := formatKeyFile(secret, created)
	if err != nil {
		return providers.VersionInfo{}, fmt.Errorf("software keystore: %w", err)
	}
	defer text.Destroy()
	// Another agent sharing the keystore may take a number first; its
	// file then exists and the link fails, so the next one is tried.
	n := d.highest() + 1
	for tries := 0; ; tries++ {
		err = createKeyFile(p.dir, versionFile(name, n), text.Bytes())
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || tries >= 16 {
			return providers.VersionInfo{}, fmt.Errorf("software keystore: %w", err)
		}
		n++
	}
	k, lockErr := newKey(name, secret, created)
	if k == nil {
		privfile.Remove(filepath.Join(p.dir, versionFile(name, n)))
		return providers.VersionInfo{}, fmt.Errorf("software: %w", lockErr)
	}
	if p.lockErr == nil {
		p.lockErr = lockErr
	}
	p.all[name][n] = k
	if n > d.current() {
		p.keys[name] = k
	}
	return providers.VersionInfo{Version: n, State: providers.VersionCurrent, Created: created}, nil
}

// RetireVersion stops version n verifying and, with destroy, deletes its
// key file and zeroes it in memory. Errors wrap ErrInvalidArgument (n is
// the current version), ErrKeyNotFound or ErrClosed.
func (p *Provider) RetireVersion(ctx context.Context, name string, n int, destroy bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("software: %w", providers.ErrClosed)
	}
	d, err := p.syncLocked(name)
	if err != nil {
		return err
	}
	_, retired := d.retired[n]
	if !d.files[n] && !retired {
		return fmt.Errorf("software: %q version %d: %w", name, n, providers.ErrKeyNotFound)
	}
	if n == d.current() {
		return fmt.Errorf("software: %q version %d: %w: the current version cannot be retired", name, n, providers.ErrInvalidArgument)
	}
	if !retired {
		infos := p.infosLocked(name, d)
		rec := retiredRecord{Retired: time.Now().UTC().Truncate(time.Second)}
		for _, info := range infos {
			if info.Version == n {
				rec.Created, rec.Superseded = info.Created, info.Superseded
			}
		}
		data, err := json.Marshal(rec)
		if err != nil {
			return fmt.Errorf("software keystore: %w", err)
		}
		// An agent that retired it at the same moment wrote the same
		// fact; either marker will do.
		if err := privfile.Create(filepath.Join(p.dir, retiredFile(name, n)), data); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("software keystore: %w", err)
		}
	}
	if !destroy || !d.files[n] {
		return nil
	}
	if err := privfile.Remove(filepath.Join(p.dir, versionFile(name, n))); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("software keystore: %w", err)
	}
	if k := p.all[name][n]; k != nil {
		k.destroy()
		delete(p.all[name], n)
	}
	return nil
}

// removeVersionsLocked deletes every version's key file and marker, for
// DeleteKey. Oldest first, so that a crash half-way never leaves an older
// version current again: the highest one goes last.
func (p *Provider) removeVersionsLocked(name string) error {
	d, err := scan(p.dir, name)
	if err != nil {
		return err
	}
	for n := 1; n <= d.highest(); n++ {
		if !d.files[n] {
			continue
		}
		if err := privfile.Remove(filepath.Join(p.dir, versionFile(name, n))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("software keystore: %w", err)
		}
	}
	for n := range d.retired {
		if err := privfile.Remove(filepath.Join(p.dir, retiredFile(name, n))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("software keystore: %w", err)
		}
	}
	for _, k := range p.all[name] {
		k.destroy()
	}
	delete(p.all, name)
	return nil
}

// splitLoaded files the keys loadKeys read, by stem, under their names
// and versions; the highest version of each name is its current one.
func splitLoaded(stems map[string]*key) (current map[string]*key, all map[string]map[int]*key) {
	current = make(map[string]*key)
	all = make(map[string]map[int]*key)
	for stem, k := range stems {
		name, n, _ := keyStem(stem) // loadKeys checked it
		if all[name] == nil {
			all[name] = make(map[int]*key)
		}
		all[name][n] = k
	}
	for name, vs := range all {
		ns := slices.Collect(func(yield func(int) bool) {
			for n := range vs {
				if !yield(n) {
					return
				}
			}
		})
		current[name] = vs[slices.Max(ns)]
	}
	return current, all
}
