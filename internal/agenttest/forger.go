package agenttest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// ForgerEnv, set to a socket path in a test binary's environment, makes
// [RunForgerIfAsked] serve a forging agent there instead of running the
// tests: the impostor another local user would plant at the agent's path.
const ForgerEnv = "HMAC_AGENT_TEST_FORGER"

// ForgerSocketActivated as $HMAC_AGENT_TEST_FORGER makes the forger serve
// on the socket systemd passes it (fd 3, as systemd-socket-activate does):
// a service of its own behind a socket root made.
const ForgerSocketActivated = "LISTEN_FDS"

// RunForgerIfAsked serves a forging agent and never returns when
// $HMAC_AGENT_TEST_FORGER is set; TestMain calls it first.
func RunForgerIfAsked() {
	path := os.Getenv(ForgerEnv)
	if path == "" {
		return
	}
	var l net.Listener
	var err error
	if path == ForgerSocketActivated {
		l, err = net.FileListener(os.NewFile(3, "LISTEN_FDS"))
	} else {
		os.MkdirAll(filepath.Dir(path), 0o755)
		os.Remove(path) // an earlier forger's
		l, err = net.Listen("unix", path)
	}
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	// On SIGTERM: accept what is still queued, let every connection end,
	// then exit, so the record is complete.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	fmt.Println("listening")
	go func() {
		<-sigs
		l.(*net.UnixListener).SetDeadline(time.Now().Add(200 * time.Millisecond))
	}()
	ServeForgery(l, os.Stdout)
	os.Exit(0)
}

// ServeForgery answers on l as an agent that lies: it completes the
// handshake, says every tag is valid, returns all-zero tags and accepts
// every key. A client that talks to it accepts forged tags and hands it
// key bytes. For each connection it writes "accepted" to record, and
// "received N" after each read of N bytes. It returns when l fails and
// every connection has ended (or after two seconds more).
func ServeForgery(l net.Listener, record io.Writer) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	defer func() {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
	}()
	note := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(record, format+"\n", args...)
		mu.Unlock()
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		note("accepted")
		wg.Add(1)
		go func() {
			defer wg.Done()
			forge(c, note)
		}()
	}
}

type countingReader struct {
	r    io.Reader
	note func(string, ...any)
}

func (r countingReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	if n > 0 {
		r.note("received %d", n)
	}
	return n, err
}

func forge(c net.Conn, note func(string, ...any)) {
	defer c.Close()
	fr := wire.NewFrameReader(bufio.NewReader(countingReader{c, note}), wire.DefaultMaxFrame)
	for {
		body, err := fr.Next()
		if err != nil {
			return
		}
		var m wire.Message
		if err := wire.Decode(body, &m); err != nil {
			return
		}
		reply := wire.Message{Type: wire.TypeOK, ID: m.ID}
		switch m.Type {
		case wire.TypeHello:
			reply = wire.Message{Type: wire.TypeHelloReply, ID: m.ID, Version: wire.Version, MaxFrame: wire.DefaultMaxFrame, MaxContexts: 64, MaxInFlight: 64}
		case wire.TypeMAC, wire.TypeFinalize:
			reply = wire.Message{Type: wire.TypeTag, ID: m.ID, Tag: make([]byte, 32)}
		case wire.TypeGenerateKey, wire.TypeImportKey, wire.TypeImportWrapped, wire.TypeListKeys, wire.TypeStatus:
			data, _ := json.Marshal(map[string]any{"name": string(m.Key), "provider": "soft"})
			if m.Type == wire.TypeListKeys {
				data = []byte("[]")
			}
			reply = wire.Message{Type: wire.TypeData, ID: m.ID, Data: data}
		case wire.TypeUpdate, wire.TypeClose:
			continue
		}
		out, _ := reply.Append(nil)
		fr.Release()
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// Forger is a forging agent running as a process of its own.
type Forger struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

// StartForger runs the test binary bin (a copy of os.Args[0] that uid may
// execute) as uid:gid, serving a forging agent at path. The test binary's
// TestMain must call RunForgerIfAsked. It is killed when the test ends.
func StartForger(t testing.TB, bin, path string, uid, gid uint32) *Forger {
	t.Helper()
	cmd := ChildCommand(bin, &syscall.Credential{Uid: uid, Gid: gid}, ForgerEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &Forger{cmd: cmd, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if line == "listening" || strings.HasPrefix(line, "error") {
				ready <- line
				continue
			}
			f.mu.Lock()
			f.lines = append(f.lines, line)
			f.mu.Unlock()
		}
		close(ready)
	}()
	t.Cleanup(f.Stop)
	select {
	case line := <-ready:
		if line != "listening" {
			t.Fatalf("the forger as uid %d: %s", uid, line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the forger did not start")
	}
	return f
}

// Stop stops the forger and waits for its record to be complete.
func (f *Forger) Stop() {
	f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		f.cmd.Process.Kill()
		<-f.done
	}
	f.cmd.Wait()
}

// Record returns how many connections the forger accepted and how many
// bytes it received over all of them. Call it after Stop for a complete
// count.
func (f *Forger) Record() (accepted, received int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, line := range f.lines {
		if line == "accepted" {
			accepted++
		} else if n, ok := strings.CutPrefix(line, "received "); ok {
			v, _ := strconv.Atoi(n)
			received += v
		}
	}
	return accepted, received
}
