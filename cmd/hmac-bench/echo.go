package main

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// The echo server is the floor for a round trip: a Unix socket server in
// its own process, like the agent, that reads a frame of the size of a
// 64-byte MAC request and answers with a frame of the size of a TAG reply,
// doing nothing else.

const echoArg = "__echo-server"

// replySize is the size of a TAG reply of HMAC-SHA256.
const replySize = 4 + 1 + 4 + 32

func runEchoServer(path string) {
	l, err := net.Listen("unix", path)
	if err != nil {
		os.Exit(1)
	}
	// Standard input is a pipe from hmac-bench: its end, even by a kill,
	// ends this server, which removes the directory made for its socket.
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.RemoveAll(filepath.Dir(path))
		os.Exit(0)
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go echoConn(c)
	}
}

// echoConn answers each frame read from c with a TAG-sized reply that
// carries its request ID, until c ends.
func echoConn(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	reply := make([]byte, replySize)
	binary.BigEndian.PutUint32(reply, replySize-4)
	var hdr [4]byte
	body := make([]byte, 1<<16)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[:]))
		if n > len(body) {
			return
		}
		if _, err := io.ReadFull(r, body[:n]); err != nil {
			return
		}
		copy(reply[5:9], body[1:5]) // the request ID
		w.Write(reply)
		if r.Buffered() == 0 {
			w.Flush()
		}
	}
}

// startEcho runs the echo server as a child process, its socket in dir,
// a directory of its own that it removes if hmac-bench dies first.
func startEcho(dir string) (path string, stop func(), err error) {
	path = filepath.Join(dir, "echo.sock")
	self, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(self, echoArg, path)
	cmd.Stdin = r
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return "", nil, err
	}
	for i := 0; i < 500; i++ {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return path, func() { w.Close(); cmd.Process.Kill(); cmd.Wait() }, nil
}
