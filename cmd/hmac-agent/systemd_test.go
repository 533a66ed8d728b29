package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// agentPID finds the agent's process through the socket's peer
// credentials.
func agentPID(t *testing.T, path string) int {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, _ := c.(*net.UnixConn).SyscallConn()
	var pid int
	raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err == nil {
			pid = int(cred.Pid)
		}
	})
	if pid == 0 {
		t.Fatal("no peer credentials")
	}
	return pid
}

func tag(key, msg []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil)
}

// TestUnderSystemdSocketActivate runs the agent as systemd would: started
// by a connection to a socket passed in LISTEN_FDS, reporting readiness on
// NOTIFY_SOCKET, reloading on SIGHUP while a client streams, and stopping
// on SIGTERM with a request in flight.
func TestUnderSystemdSocketActivate(t *testing.T) {
	activate := agenttest.RequireCommand(t, "systemd-socket-activate", "systemd")
	dir := agenttest.SocketDir(t)
	sock := filepath.Join(dir, "agent.sock")
	conf := filepath.Join(dir, "agent.toml")
	writeConf := func(keys string) {
		writeFile(t, conf, softwareConfig(filepath.Join(dir, "keys"))+keys, 0o600)
	}
	writeConf("[[key]]\nname = \"streamer\"\nprovider = \"soft\"\nobject = \"a\"\n[[key]]\nname = \"old\"\nprovider = \"soft\"\nobject = \"b\"\n")

	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	activated := startProcess(t, nil, activate, "-l", sock, "-E", "NOTIFY_SOCKET="+filepath.Join(dir, "notify"), agentBinary(t), "serve", "--config", conf)
	// systemd-socket-activate listens first; the first connection
	// starts the agent.
	c := activated.mustDial(t, sock)
	ctx := context.Background()
	notify.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 256)
	n, err := notify.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("no READY=1 on NOTIFY_SOCKET: %q %v", buf[:n], err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if _, err := c.ImportKey(ctx, "soft", k, []byte("secret-"+k)); err != nil {
			t.Fatal(err)
		}
	}
	st, err := c.Status(ctx)
	if err != nil || st.Connections != 1 || len(st.Providers) != 1 || !st.Providers[0].Healthy {
		t.Fatalf("status %+v %v", st, err)
	}
	t.Logf("status: version %s, pid %d, %d keys, %d connections, providers %+v", st.Version, st.PID, st.Keys, st.Connections, st.Providers)
	pid := agentPID(t, sock)
	if pid != activated.pid() {
		t.Errorf("the agent runs as pid %d, not as the activated process %d", pid, activated.pid())
	}

	// Reload while a client streams: add "new", remove "old".
	h, err := c.New(ctx, "streamer", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("stream"), 10000)
	var streamed []byte
	reloaded := false
	for i := 0; i < 200; i++ {
		if err := h.Update(chunk); err != nil {
			t.Fatal(err)
		}
		streamed = append(streamed, chunk...)
		if i == 100 {
			writeConf("[[key]]\nname = \"streamer\"\nprovider = \"soft\"\nobject = \"a\"\n[[key]]\nname = \"new\"\nprovider = \"soft\"\nobject = \"c\"\n")
			syscall.Kill(pid, syscall.SIGHUP)
			reloaded = true
		}
	}
	got, err := h.Finalize(ctx)
	if err != nil || !bytes.Equal(got, tag([]byte("secret-a"), streamed)) || !reloaded {
		t.Fatalf("the stream across the reload: %x %v", got, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, errNew := c.MAC(ctx, "new", client.SHA256, nil)
		_, errOld := c.MAC(ctx, "old", client.SHA256, nil)
		if errNew == nil && errors.Is(errOld, client.ErrKeyNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the reload: new %v, old %v", errNew, errOld)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st, _ := c.Status(ctx); st.Connections != 1 {
		t.Errorf("the reload dropped connections: %d open", st.Connections)
	}
	// A config that does not validate is rejected; the old one stays.
	os.WriteFile(conf, []byte("[[provider]]\nname = \"soft\"\ntype = \"quantum\"\n"), 0o600)
	syscall.Kill(pid, syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	if _, err := c.MAC(ctx, "new", client.SHA256, nil); err != nil {
		t.Errorf("after a rejected reload: %v", err)
	}

	// SIGTERM with a request in flight: a long stream whose Finalize is
	// sent just before the signal still gets its tag.
	h, err = c.New(ctx, "streamer", client.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 1<<20)
	for range 200 {
		h.Update(big)
	}
	type result struct {
		tag []byte
		err error
	}
	res := make(chan result, 1)
	go func() {
		t, err := h.Finalize(ctx)
		res <- result{t, err}
	}()
	time.Sleep(time.Millisecond)
	syscall.Kill(pid, syscall.SIGTERM)
	r := <-res
	if r.err != nil || !bytes.Equal(r.tag, tag([]byte("secret-a"), bytes.Repeat(big, 200))) {
		t.Errorf("the request in flight at SIGTERM: %x %v", r.tag, r.err)
	}
	if err := activated.wait(); err != nil {
		t.Errorf("the agent's exit: %v\n%s", err, activated.logs())
	}
	logs := activated.logs()
	for _, want := range []string{"using sockets passed by systemd", "reloaded", "added=[new] removed=[old]", "reload rejected", "stopping", "stopped"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
	t.Logf("agent log:\n%s", logs)
}

// TestSocketActivationRefusesNonUnixSocket: a socket unit that says
// ListenStream=PORT hands the agent a TCP socket, reachable from the
// network, where no caller has credentials. The agent must refuse to
// serve it, not answer a HELLO from anyone who can reach the port.
func TestSocketActivationRefusesNonUnixSocket(t *testing.T) {
	activate := agenttest.RequireCommand(t, "systemd-socket-activate", "systemd")
	dir := agenttest.SocketDir(t)
	conf := filepath.Join(dir, "agent.toml")
	writeFile(t, conf, softwareConfig(filepath.Join(dir, "keys")), 0o600)
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	activated := startProcess(t, nil, activate, "-l", addr, agentBinary(t), "serve", "--config", conf)
	var c net.Conn
	for i := 0; ; i++ { // systemd-socket-activate listens first
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		if i > 500 {
			t.Fatalf("nothing listens on %s: %v\n%s", addr, err, activated.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer c.Close()
	// HELLO, version 1 to 1 (docs/protocol.md).
	c.Write([]byte{0, 0, 0, 0x0d, 0x01, 0, 0, 0, 1, 'H', 'M', 'A', 'C', 0, 1, 0, 1})
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply := make([]byte, 64)
	if n, _ := c.Read(reply); n > 0 {
		t.Errorf("the agent answered a TCP connection: % x", reply[:n])
	}
	select {
	case <-activated.done:
		if activated.err == nil {
			t.Error("the agent exited with status 0")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the agent still serves a TCP socket:\n%s", activated.logs())
	}
	if !strings.Contains(activated.logs(), "not a Unix socket") {
		t.Errorf("the agent's error does not say why:\n%s", activated.logs())
	}
}
