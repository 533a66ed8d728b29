//go:build linux

package socket_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hmac-agent/hmac-agent/internal/agenttest"
)

// stalledFS is a FUSE filesystem, as any user may mount one of their
// own, served by a child process of the test (in the test's own process,
// its garbage collector could wait for a thread held in an exec of the
// file, which waits for the server): one executable file, "exe", read as
// usual by everyone but the agent (the test process), whose reads get no
// answer until the test lets them go. So the agent's read of a caller's
// /proc/PID/exe blocks in the kernel exactly as on a filesystem that
// stopped answering, while the caller runs from it.
type stalledFS struct {
	exe  string // the file's path
	srv  *exec.Cmd
	ctl  io.WriteCloser
	held atomic.Int32 // the agent's reads unanswered, as the server reports them
	gone chan struct{}
}

// mountStalledFS mounts a stalledFS whose file is a copy of the test
// binary, in a directory every user may reach, until the test ends.
func mountStalledFS(t *testing.T) *stalledFS {
	t.Helper()
	agenttest.RequireRoot(t, "to mount a FUSE filesystem")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("FUSE is needed to stall a read in the kernel: %v", err)
		}
		t.Skipf("FUSE is needed to stall a read in the kernel: %v", err)
	}
	mnt := filepath.Join(agenttest.SharedDir(t, "hmac-agent-fuse-"), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	fs := &stalledFS{exe: filepath.Join(mnt, "exe"), gone: make(chan struct{})}
	fs.srv = agenttest.ChildCommand(os.Args[0], nil, "HMAC_AGENT_IDENTITY_CHILD=stalled-fs",
		"STALLED_FS_DIR="+mnt, "STALLED_FS_AGENT="+strconv.Itoa(os.Getpid()))
	fs.srv.Stderr = os.Stderr
	out, err := fs.srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if fs.ctl, err = fs.srv.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := fs.srv.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "mounted" {
		fs.srv.Process.Kill()
		fs.srv.Wait()
		t.Fatalf("the FUSE server did not mount %s: %q", mnt, lines.Text())
	}
	go func() {
		defer close(fs.gone)
		for lines.Scan() {
			if n, err := strconv.Atoi(lines.Text()); err == nil {
				fs.held.Store(int32(n))
			}
		}
	}()
	t.Cleanup(func() {
		// Closing its input makes the server answer the held reads
		// (until they return, the agent's files keep the filesystem
		// busy), unmount and exit.
		fs.ctl.Close()
		<-fs.gone
		fs.srv.Wait()
	})
	return fs
}

// heldReads is how many of the agent's reads wait for an answer now.
func (fs *stalledFS) heldReads() int { return int(fs.held.Load()) }

// stalledFSChild serves a stalledFS at STALLED_FS_DIR, holding the reads
// of files opened by STALLED_FS_AGENT's threads. It says "mounted", then
// the number of reads it holds each time it changes, and when its input
// closes answers them, unmounts and exits.
func stalledFSChild() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "stalled-fs:", err)
		os.Exit(2)
	}
	mnt := os.Getenv("STALLED_FS_DIR")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		fail(err)
	}
	dev, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fail(err)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", dev)
	if err := unix.Mount("hmac-agent-test", mnt, "fuse.hmac-agent-test", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		fail(err)
	}
	fs := &stalledServer{dev: dev, data: data, agent: os.Getenv("STALLED_FS_AGENT"), agentFH: make(map[uint64]bool)}
	served := make(chan struct{})
	go func() {
		fs.serve()
		close(served)
	}()
	fmt.Println("mounted")
	io.Copy(io.Discard, os.Stdin)
	fs.letGo()
	unix.Unmount(mnt, unix.MNT_DETACH)
	<-served
	os.Exit(0)
}

// stalledServer is the FUSE server of a stalledFS.
type stalledServer struct {
	dev   int // the /dev/fuse descriptor
	data  []byte
	agent string // the pid whose threads' reads are held

	mu      sync.Mutex
	agentFH map[uint64]bool // files the agent opened: their reads are held
	held    []uint64        // the unique IDs of the reads held
	release bool            // answer every read
	nextFH  uint64
}

// FUSE opcodes and flags of <linux/fuse.h> that the test serves.
const (
	fuseLookup      = 1
	fuseForget      = 2
	fuseGetattr     = 3
	fuseOpen        = 14
	fuseRead        = 15
	fuseRelease     = 18
	fuseFlush       = 25
	fuseInit        = 26
	fuseInterrupt   = 36
	fuseDestroy     = 38
	fuseBatchForget = 42

	fuseInHeaderSize = 40
	fopenDirectIO    = 1 << 0
	fuseRootID       = 1
	fuseExeID        = 2
)

// letGo answers the reads held, and every later one.
func (fs *stalledServer) letGo() {
	fs.mu.Lock()
	held := fs.held
	fs.held, fs.release = nil, true
	fs.mu.Unlock()
	for _, unique := range held {
		fs.reply(unique, -int32(unix.EIO), nil)
	}
}

func (fs *stalledServer) serve() {
	buf := make([]byte, 1<<20+4096)
	for {
		n, err := unix.Read(fs.dev, buf)
		switch {
		case err == unix.EINTR || err == unix.ENOENT: // a request interrupted before it was read
			continue
		case err != nil: // unmounted
			return
		case n < fuseInHeaderSize:
			continue
		}
		req := buf[:n]
		op := binary.LittleEndian.Uint32(req[4:])
		unique := binary.LittleEndian.Uint64(req[8:])
		node := binary.LittleEndian.Uint64(req[16:])
		pid := binary.LittleEndian.Uint32(req[32:])
		in := req[fuseInHeaderSize:]
		switch op {
		case fuseInit:
			out := make([]byte, 64)
			binary.LittleEndian.PutUint32(out[0:], 7)
			binary.LittleEndian.PutUint32(out[4:], 31)
			binary.LittleEndian.PutUint32(out[8:], binary.LittleEndian.Uint32(in[8:])) // max_readahead
			binary.LittleEndian.PutUint16(out[16:], 16)                                // max_background
			binary.LittleEndian.PutUint16(out[18:], 12)                                // congestion_threshold
			binary.LittleEndian.PutUint32(out[20:], 128<<10)                           // max_write
			binary.LittleEndian.PutUint32(out[24:], 1)                                 // time_gran
			binary.LittleEndian.PutUint16(out[28:], 32)                                // max_pages
			fs.reply(unique, 0, out)
		case fuseLookup:
			if node != fuseRootID || string(in) != "exe\x00" {
				fs.reply(unique, -int32(unix.ENOENT), nil)
				continue
			}
			out := make([]byte, 40)
			binary.LittleEndian.PutUint64(out[0:], fuseExeID)
			binary.LittleEndian.PutUint64(out[16:], 3600) // entry_valid
			binary.LittleEndian.PutUint64(out[24:], 3600) // attr_valid
			fs.reply(unique, 0, append(out, fs.attr(fuseExeID)...))
		case fuseGetattr:
			out := make([]byte, 16)
			binary.LittleEndian.PutUint64(out[0:], 3600) // attr_valid
			fs.reply(unique, 0, append(out, fs.attr(node)...))
		case fuseOpen:
			fs.mu.Lock()
			fs.nextFH++
			fh := fs.nextFH
			// The agent's own opens bypass the page cache, so that each
			// of its reads asks the filesystem and the caller's pages do
			// not answer for it.
			var flags uint32
			if _, err := os.Stat("/proc/" + fs.agent + "/task/" + strconv.Itoa(int(pid))); err == nil {
				fs.agentFH[fh] = true
				flags = fopenDirectIO
			}
			fs.mu.Unlock()
			out := make([]byte, 16)
			binary.LittleEndian.PutUint64(out[0:], fh)
			binary.LittleEndian.PutUint32(out[8:], flags)
			fs.reply(unique, 0, out)
		case fuseRead:
			fh := binary.LittleEndian.Uint64(in[0:])
			off := binary.LittleEndian.Uint64(in[8:])
			size := uint64(binary.LittleEndian.Uint32(in[16:]))
			fs.mu.Lock()
			hold := fs.agentFH[fh] && !fs.release
			if hold {
				fs.held = append(fs.held, unique)
				fmt.Println(len(fs.held))
			}
			fs.mu.Unlock()
			if hold {
				continue
			}
			end := min(off+size, uint64(len(fs.data)))
			fs.reply(unique, 0, fs.data[min(off, end):end])
		case fuseRelease, fuseFlush:
			fs.reply(unique, 0, nil)
		case fuseForget, fuseBatchForget, fuseInterrupt:
			// No answer: and an interrupted read stays held, as on a
			// filesystem that stopped answering.
		case fuseDestroy:
			fs.reply(unique, 0, nil)
			return
		default:
			fs.reply(unique, -int32(unix.ENOSYS), nil)
		}
	}
}

// attr is the fuse_attr of node.
func (fs *stalledServer) attr(node uint64) []byte {
	out := make([]byte, 88)
	binary.LittleEndian.PutUint64(out[0:], node) // ino
	mode, nlink := uint32(unix.S_IFDIR|0o755), uint32(2)
	if node == fuseExeID {
		mode, nlink = unix.S_IFREG|0o755, 1
		binary.LittleEndian.PutUint64(out[8:], uint64(len(fs.data)))          // size
		binary.LittleEndian.PutUint64(out[16:], uint64(len(fs.data)+511)/512) // blocks
	}
	binary.LittleEndian.PutUint32(out[60:], mode)
	binary.LittleEndian.PutUint32(out[64:], nlink)
	binary.LittleEndian.PutUint32(out[80:], 4096) // blksize
	return out
}

func (fs *stalledServer) reply(unique uint64, errno int32, payload []byte) {
	out := make([]byte, 16, 16+len(payload))
	binary.LittleEndian.PutUint32(out[0:], uint32(16+len(payload)))
	binary.LittleEndian.PutUint32(out[4:], uint32(errno))
	binary.LittleEndian.PutUint64(out[8:], unique)
	out = append(out, payload...)
	if _, err := unix.Write(fs.dev, out); err != nil && !errors.Is(err, unix.ENOENT) {
		// ENOENT: the request was interrupted meanwhile.
		return
	}
}
