// Package p11kit serves a PKCS#11 token over a Unix socket with
// `p11-kit server`, for tests: the token is then used through
// p11-kit-client.so, as agents on several hosts would use one network
// HSM. Every PKCS#11 call crosses the socket to the server process, which
// alone loads the token's module.
//
// The client module reads the server's address from the environment
// variable P11_KIT_SERVER_ADDRESS when it is initialized; [Server.Env]
// and [Server.Setenv] give it. A process's client module talks to one
// server at a time.
package p11kit

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// clientModules are where Debian's p11-kit-modules puts the client
// module, by architecture.
const clientModules = "/usr/lib/*/pkcs11/p11-kit-client.so"

// AddressVariable is the environment variable the client module reads.
const AddressVariable = "P11_KIT_SERVER_ADDRESS"

// ClientModule returns the path of p11-kit-client.so.
func ClientModule() (string, error) {
	found, _ := filepath.Glob(clientModules)
	if len(found) == 0 {
		return "", fmt.Errorf("p11-kit-client.so not found as %s (apt-get install p11-kit-modules)", clientModules)
	}
	return found[0], nil
}

// Available says whether p11-kit's server and client module are
// installed, and if not, why.
func Available() error {
	if _, err := exec.LookPath("p11-kit"); err != nil {
		return fmt.Errorf("p11-kit: %w (apt-get install p11-kit)", err)
	}
	_, err := ClientModule()
	return err
}

// Server is a running `p11-kit server`.
type Server struct {
	// Address is the value for P11_KIT_SERVER_ADDRESS.
	Address string
	// Module is the client module's path.
	Module string
	cmd    *exec.Cmd
	done   chan struct{} // closed when the server has exited
}

// Env is the environment entry that points a client module at the
// server, for a process the test starts.
func (s *Server) Env() string { return AddressVariable + "=" + s.Address }

// Setenv points this process's client module at the server for the rest
// of the test. The module reads it when it is initialized.
func (s *Server) Setenv(t testing.TB) { t.Setenv(AddressVariable, s.Address) }

// Start serves the token the PKCS#11 URI names (for example
// "pkcs11:token=agent") from module, with a socket in dir. The server
// inherits the environment (SOFTHSM2_CONF for SoftHSM2). Stop ends it.
func Start(module, token, dir string) (*Server, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	client, _ := ClientModule()
	sock := filepath.Join(dir, "p11-kit.sock")
	cmd := exec.Command("p11-kit", "server", "--foreground", "--name", sock, "--provider", module, token)
	// It prints the shell lines that set the address: not needed.
	cmd.Stdout, cmd.Stderr = nil, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("p11-kit server: %w", err)
	}
	s := &Server{Address: "unix:path=" + sock, Module: client, cmd: cmd, done: make(chan struct{})}
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(s.done)
	}()
	deadline := time.After(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("p11-kit server exited before serving %s: %v", sock, waitErr)
		case <-deadline:
			s.Stop()
			return nil, fmt.Errorf("p11-kit server did not come up on %s: %v", sock, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Stop kills the server and waits for it to exit. Clients still
// connected see their token gone.
func (s *Server) Stop() {
	// SIGTERM lets the server end the processes it serves clients with.
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// Require starts a server of the token for a test and stops it when the
// test ends. Without p11-kit the test is skipped, unless CI is set: then
// it fails, so a CI machine missing the packages cannot pass by skipping.
func Require(t testing.TB, module, token string) *Server {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and p11-kit is missing: %v", err)
		}
		t.Skipf("p11-kit is not installed: %v", err)
	}
	s, err := Start(module, token, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}
