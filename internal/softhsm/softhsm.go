// Package softhsm makes SoftHSM2 tokens in temporary directories for tests
// and benchmarks, with softhsm2-util, as a person would.
//
// SoftHSM reads SOFTHSM2_CONF once, when the module is initialized, so a
// process uses one configuration: [Setup] writes it and sets the variable,
// and every token of the process lives under it.
package softhsm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Module is where Debian's softhsm2 package puts the library.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

// Token is an initialized token.
type Token struct {
	Label string
	PIN   string
	SOPIN string
}

var (
	setupOnce sync.Once
	setupDir  string
	setupErr  error
)

// Available says whether SoftHSM2 is installed, and if not, why.
func Available() error {
	if _, err := os.Stat(Module); err != nil {
		return fmt.Errorf("SoftHSM2 module %s: %w (apt-get install softhsm2)", Module, err)
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return fmt.Errorf("softhsm2-util: %w (apt-get install softhsm2)", err)
	}
	return nil
}

// Setup writes a SoftHSM configuration under a new temporary directory and
// points SOFTHSM2_CONF at it, once per process. It returns the directory;
// the caller removes it at exit.
func Setup() (string, error) {
	setupOnce.Do(func() {
		if setupErr = Available(); setupErr != nil {
			return
		}
		dir, err := os.MkdirTemp("", "softhsm-")
		if err != nil {
			setupErr = err
			return
		}
		tokens := filepath.Join(dir, "tokens")
		conf := filepath.Join(dir, "softhsm2.conf")
		if err := os.Mkdir(tokens, 0o700); err != nil {
			setupErr = err
			return
		}
		text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			setupErr = err
			return
		}
		os.Setenv("SOFTHSM2_CONF", conf)
		setupDir = dir
	})
	return setupDir, setupErr
}

// UserPIN is the user PIN of every token Create makes.
const UserPIN = "test-user-pin-1234"

// labels counts the tokens made under each label, so that a test run
// again in the same process (go test -count) gets a token of its own and
// not the first run's, which a search by label would find first.
var labels = struct {
	sync.Mutex
	used map[string]int
}{used: make(map[string]int)}

// Create initializes a new token in the process's configuration, labelled
// label, or label-N if a token of that label was made before.
//
// The PINs are long enough that a test searching logs for them cannot
// find them by chance in a timestamp, a pid or a duration.
func Create(label string) (*Token, error) {
	if _, err := Setup(); err != nil {
		return nil, err
	}
	labels.Lock()
	labels.used[label]++
	if n := labels.used[label]; n > 1 {
		label = fmt.Sprintf("%s-%d", label, n)
	}
	labels.Unlock()
	t := &Token{Label: label, PIN: UserPIN, SOPIN: "test-so-pin-5678"}
	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label,
		"--so-pin", t.SOPIN, "--pin", t.PIN).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("softhsm2-util --init-token: %v: %s", err, out)
	}
	return t, nil
}

// TokenDir is the directory SoftHSM keeps tokens in, for tests that break
// a token underneath the agent.
func TokenDir() string { return filepath.Join(setupDir, "tokens") }

// Require returns a new token for a test. Without SoftHSM2 the test is
// skipped, unless CI is set: then it fails, so a CI machine missing the
// package cannot pass by skipping.
func Require(t testing.TB, label string) *Token {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and SoftHSM2 is missing: %v", err)
		}
		t.Skipf("SoftHSM2 is not installed: %v", err)
	}
	tok, err := Create(label)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Cleanup removes the process's SoftHSM directory.
func Cleanup() error {
	if setupDir == "" {
		return nil
	}
	return os.RemoveAll(setupDir)
}
