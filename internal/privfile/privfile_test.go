package privfile

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one saying %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
}

func TestOpenDirRefusesLinksAndLooseModes(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	os.Mkdir(real, 0o700)
	link := filepath.Join(base, "link")
	os.Symlink(real, link)
	_, err := CheckDir(link, PrivateDir)
	wantErr(t, err, link, "is a symbolic link")

	os.Chmod(real, 0o750)
	_, err = CheckDir(real, PrivateDir)
	wantErr(t, err, real, "mode 0750", "group and others must have no access")
	os.Chmod(real, 0o700)

	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	_, err = CheckDir(file, PrivateDir)
	wantErr(t, err, file, "not a directory")

	loose := filepath.Join(base, "loose")
	os.Mkdir(loose, 0o770)
	os.Chmod(loose, 0o770)
	_, err = CheckDir(filepath.Join(loose, "keys"), PrivateDir)
	wantErr(t, err, loose, "a parent of the agent's directory", "mode 0770")
	if _, err := os.Lstat(filepath.Join(loose, "keys")); err == nil {
		t.Error("a directory was made under a loose parent")
	}
}

func TestOpenDirMakesMissingParents(t *testing.T) {
	base := t.TempDir()
	got, err := CheckDir(filepath.Join(base, "a", "b", "keys"), PrivateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a", "a/b", "a/b/keys"} {
		fi, err := os.Lstat(filepath.Join(base, d))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want a 0700 directory", d, fi.Mode(), err)
		}
	}
	if want, _ := filepath.EvalSymlinks(filepath.Join(base, "a", "b", "keys")); got != want {
		t.Errorf("path to use %s, want %s", got, want)
	}
	// A parent reached through a link resolves to the link's target:
	// later uses do not go through the link.
	os.Symlink(filepath.Join(base, "a"), filepath.Join(base, "via"))
	got, err = CheckDir(filepath.Join(base, "via", "b", "keys"), PrivateDir)
	if err != nil || strings.Contains(got, "via") {
		t.Errorf("through a linked parent: %s %v", got, err)
	}
}

func TestOpenDirStickyParent(t *testing.T) {
	tmp := filepath.Join(t.TempDir(), "tmp")
	os.Mkdir(tmp, 0o700)
	if err := syscall.Chmod(tmp, 0o1777); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckDir(filepath.Join(tmp, "mine"), DirRule{Mode: 0o700, Forbidden: 0o022}); err != nil {
		t.Errorf("a directory of the agent's own in a sticky parent: %v", err)
	}
	syscall.Chmod(tmp, 0o777) // world-writable, not sticky
	_, err := CheckDir(filepath.Join(tmp, "mine"), DirRule{Mode: 0o700, Forbidden: 0o022})
	wantErr(t, err, tmp, "mode 0777", "unless sticky")
}

func TestOpenDirOtherOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the tests do not run as root")
		}
		t.Skip("needs root to make files of other users")
	}
	base := t.TempDir()
	theirs := filepath.Join(base, "theirs")
	os.Mkdir(theirs, 0o700)
	os.Chown(theirs, 1005, 1005)
	_, err := CheckDir(theirs, PrivateDir)
	wantErr(t, err, theirs, "owned by uid 1005")
	_, err = CheckDir(filepath.Join(theirs, "keys"), PrivateDir)
	wantErr(t, err, theirs, "a parent of the agent's directory", "owned by uid 1005")

	pin := filepath.Join(base, "pin")
	os.WriteFile(pin, []byte("1234"), 0o600)
	os.Chown(pin, 1005, 1005)
	_, err = ReadSecret(pin)
	wantErr(t, err, pin, "owned by uid 1005", "owned by the agent's user")
}

func TestReadSecret(t *testing.T) {
	base := t.TempDir()
	pin := filepath.Join(base, "pin")
	os.WriteFile(pin, []byte("1234\n"), 0o600)
	if b, err := ReadSecret(pin); err != nil || string(b) != "1234\n" {
		t.Fatalf("ReadSecret: %q %v", b, err)
	}
	link := filepath.Join(base, "link")
	os.Symlink(pin, link)
	_, err := ReadSecret(link)
	wantErr(t, err, link, "symbolic link")
	for _, mode := range []os.FileMode{0o640, 0o604, 0o700} {
		os.Chmod(pin, mode)
		_, err = ReadSecret(pin)
		wantErr(t, err, pin, "0600 or stricter")
	}
	os.Chmod(pin, 0o400)
	if _, err := ReadSecret(pin); err != nil {
		t.Errorf("a 0400 secret file: %v", err)
	}
	fifo := filepath.Join(base, "fifo")
	syscall.Mkfifo(fifo, 0o600)
	_, err = ReadSecret(fifo) // must not block
	wantErr(t, err, fifo, "not a regular file")
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside")
	os.WriteFile(outside, []byte("not ours"), 0o600)
	for _, name := range []string{".webhook.key.tmp-1234", ".sha256.json.tmp-99", "webhook.key", ".hidden"} {
		os.WriteFile(filepath.Join(dir, name), []byte("k"), 0o600)
	}
	os.Mkdir(filepath.Join(dir, ".dir.tmp-1"), 0o700)
	os.Symlink(outside, filepath.Join(dir, ".link.key.tmp-2"))

	removed, err := RemoveStale(dir)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{".link.key.tmp-2", ".sha256.json.tmp-99", ".webhook.key.tmp-1234"}; !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	entries, _ := os.ReadDir(dir)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{".dir.tmp-1", ".hidden", "webhook.key"}; !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("the link's target was removed: %v", err)
	}
	// A link in the directory's place is not followed.
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(dir, link)
	if _, err := RemoveStale(link); err == nil {
		t.Error("RemoveStale followed a link for its directory")
	}
}

func TestReadRefusesLink(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "real.key")
	os.WriteFile(key, []byte("{}"), 0o600)
	link := filepath.Join(dir, "webhook.key")
	os.Symlink(key, link)
	_, err := Read(link)
	wantErr(t, err, link, "is a symbolic link")
	if b, err := Read(key); err != nil || string(b) != "{}" {
		t.Errorf("Read of the file itself: %q %v", b, err)
	}
}
