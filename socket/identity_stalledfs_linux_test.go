//go:build linux

package socket

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// StalledFS is a FUSE filesystem, as any user may mount one of their own,
// served by a child process of the test (in the test's own process, its
// garbage collector could wait for a thread held in an exec of a file on
// it, which waits for the server). It holds executable files, copies of
// the test binary differing by a trailing name, read as usual by everyone
// but the test process (the agent), whose reads get no answer until
// Release. So the agent's read of a caller's /proc/PID/exe blocks in the
// kernel exactly as on a filesystem that stopped answering, while the
// caller runs from it.
type StalledFS struct {
	dir  string
	srv  *exec.Cmd
	ctl  io.WriteCloser
	held atomic.Int32 // the agent's reads unanswered, as the server reports them
	gone chan struct{}
}

// MountStalledFS mounts a StalledFS of files executables, in a directory
// every user may reach, until the test ends. It needs root and /dev/fuse;
// without them it fails the test when CI is set and skips it otherwise.
func MountStalledFS(t testing.TB, files int) *StalledFS {
	t.Helper()
	for _, err := range []error{rootError(), fuseError()} {
		if err == nil {
			continue
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set, and a read stalled in the kernel needs root and FUSE: %v", err)
		}
		t.Skipf("a read stalled in the kernel needs root and FUSE: %v", err)
	}
	top, err := os.MkdirTemp("", "hmac-agent-fuse-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	os.Chmod(top, 0o711)
	fs := &StalledFS{dir: filepath.Join(top, "mnt"), gone: make(chan struct{})}
	if err := os.Mkdir(fs.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fs.srv = exec.Command(os.Args[0], "-test.run=^$")
	fs.srv.Env = append(os.Environ(), "HMAC_AGENT_IDENTITY_CHILD=stalled-fs",
		"STALLED_FS_DIR="+fs.dir, "STALLED_FS_FILES="+strconv.Itoa(files), "STALLED_FS_AGENT="+strconv.Itoa(os.Getpid()))
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
		t.Fatalf("the FUSE server did not mount %s: %q", fs.dir, lines.Text())
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
		// Closing its input makes the server answer the reads it holds
		// (until they return, the agent's files keep the filesystem
		// busy), unmount and exit.
		fs.ctl.Close()
		<-fs.gone
		fs.srv.Wait()
	})
	return fs
}

func rootError() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("running as uid %d", os.Geteuid())
	}
	return nil
}

func fuseError() error {
	_, err := os.Stat("/dev/fuse")
	return err
}

// Exe is the path of file i.
func (fs *StalledFS) Exe(i int) string { return filepath.Join(fs.dir, "exe"+strconv.Itoa(i)) }

// HeldReads is how many of the agent's reads wait for an answer now.
func (fs *StalledFS) HeldReads() int { return int(fs.held.Load()) }

// Release answers the reads held, and every later one, as a slow
// filesystem finally does.
func (fs *StalledFS) Release() { fmt.Fprintln(fs.ctl, "release") }

// StalledFSChild serves a StalledFS of STALLED_FS_FILES files at
// STALLED_FS_DIR, holding the reads of files opened by STALLED_FS_AGENT's
// threads. It says "mounted", then the number of reads it holds each time
// it grows; a line "release" on its input has it answer them, and the end
// of its input has it answer them, unmount and exit.
func StalledFSChild() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "stalled-fs:", err)
		os.Exit(2)
	}
	mnt := os.Getenv("STALLED_FS_DIR")
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		fail(err)
	}
	n, _ := strconv.Atoi(os.Getenv("STALLED_FS_FILES"))
	// Files of a mount made later may have the same device number,
	// inode and size: a time of their own makes them new versions.
	fs := &stalledServer{agent: os.Getenv("STALLED_FS_AGENT"), agentFH: make(map[uint64]bool), made: time.Now()}
	for i := range n {
		fs.files = append(fs.files, append(append([]byte(nil), bin...), "exe"+strconv.Itoa(i)...))
	}
	if fs.dev, err = unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		fail(err)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fs.dev)
	if err := unix.Mount("hmac-agent-test", mnt, "fuse.hmac-agent-test", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		fail(err)
	}
	served := make(chan struct{})
	go func() {
		fs.serve()
		close(served)
	}()
	fmt.Println("mounted")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "release" {
			fs.release()
		}
	}
	fs.release()
	unix.Unmount(mnt, unix.MNT_DETACH)
	<-served
	os.Exit(0)
}

// stalledServer is the FUSE server of a StalledFS. Node 1 is the root,
// node 2+i file i.
type stalledServer struct {
	dev   int // the /dev/fuse descriptor
	files [][]byte
	agent string    // the pid whose threads' reads are held
	made  time.Time // the files' mtime and ctime

	mu       sync.Mutex
	agentFH  map[uint64]bool // files the agent opened: their reads are held
	held     []heldRead
	released bool // answer every read
	nextFH   uint64
}

type heldRead struct {
	unique, node, off, size uint64
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
)

// release answers the reads held, and has every later one answered.
func (fs *stalledServer) release() {
	fs.mu.Lock()
	held := fs.held
	fs.held, fs.released = nil, true
	fs.mu.Unlock()
	for _, r := range held {
		fs.replyRead(r)
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
			name, _, _ := strings.Cut(string(in), "\x00")
			i, err := strconv.Atoi(strings.TrimPrefix(name, "exe"))
			if node != fuseRootID || !strings.HasPrefix(name, "exe") || err != nil || i < 0 || i >= len(fs.files) {
				fs.reply(unique, -int32(unix.ENOENT), nil)
				continue
			}
			out := make([]byte, 40)
			binary.LittleEndian.PutUint64(out[0:], uint64(2+i))
			binary.LittleEndian.PutUint64(out[16:], 3600) // entry_valid
			binary.LittleEndian.PutUint64(out[24:], 3600) // attr_valid
			fs.reply(unique, 0, append(out, fs.attr(uint64(2+i))...))
		case fuseGetattr:
			out := make([]byte, 16)
			binary.LittleEndian.PutUint64(out[0:], 3600) // attr_valid
			fs.reply(unique, 0, append(out, fs.attr(node)...))
		case fuseOpen:
			fs.mu.Lock()
			fs.nextFH++
			fh := fs.nextFH
			// The agent's own opens bypass the page cache, so that each
			// of its reads asks the filesystem and the callers' pages do
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
			r := heldRead{unique: unique, node: node, off: binary.LittleEndian.Uint64(in[8:]), size: uint64(binary.LittleEndian.Uint32(in[16:]))}
			fs.mu.Lock()
			hold := fs.agentFH[binary.LittleEndian.Uint64(in[0:])] && !fs.released
			if hold {
				fs.held = append(fs.held, r)
				fmt.Println(len(fs.held))
			}
			fs.mu.Unlock()
			if !hold {
				fs.replyRead(r)
			}
		case fuseRelease, fuseFlush:
			fs.reply(unique, 0, nil)
		case fuseForget, fuseBatchForget, fuseInterrupt:
			// No answer: an interrupted read stays held, as on a
			// filesystem that stopped answering.
		case fuseDestroy:
			fs.reply(unique, 0, nil)
			return
		default:
			fs.reply(unique, -int32(unix.ENOSYS), nil)
		}
	}
}

func (fs *stalledServer) replyRead(r heldRead) {
	if r.node < 2 || r.node-2 >= uint64(len(fs.files)) {
		fs.reply(r.unique, -int32(unix.EIO), nil)
		return
	}
	data := fs.files[r.node-2]
	end := min(r.off+r.size, uint64(len(data)))
	fs.reply(r.unique, 0, data[min(r.off, end):end])
}

// attr is the fuse_attr of node.
func (fs *stalledServer) attr(node uint64) []byte {
	out := make([]byte, 88)
	binary.LittleEndian.PutUint64(out[0:], node) // ino
	mode, nlink := uint32(unix.S_IFDIR|0o755), uint32(2)
	if node >= 2 && node-2 < uint64(len(fs.files)) {
		size := uint64(len(fs.files[node-2]))
		mode, nlink = unix.S_IFREG|0o755, 1
		binary.LittleEndian.PutUint64(out[8:], size)            // size
		binary.LittleEndian.PutUint64(out[16:], (size+511)/512) // blocks
	}
	for _, at := range []int{32, 40} { // mtime, ctime
		binary.LittleEndian.PutUint64(out[at:], uint64(fs.made.Unix()))
	}
	binary.LittleEndian.PutUint32(out[52:], uint32(fs.made.Nanosecond())) // mtimensec
	binary.LittleEndian.PutUint32(out[56:], uint32(fs.made.Nanosecond())) // ctimensec
	binary.LittleEndian.PutUint32(out[60:], mode)
	binary.LittleEndian.PutUint32(out[64:], nlink)
	binary.LittleEndian.PutUint32(out[80:], 4096) // blksize
	return out
}

// reply answers request unique; a request interrupted meanwhile gets
// ENOENT from the write, which changes nothing.
func (fs *stalledServer) reply(unique uint64, errno int32, payload []byte) {
	out := make([]byte, 16, 16+len(payload))
	binary.LittleEndian.PutUint32(out[0:], uint32(16+len(payload)))
	binary.LittleEndian.PutUint32(out[4:], uint32(errno))
	binary.LittleEndian.PutUint64(out[8:], unique)
	unix.Write(fs.dev, append(out, payload...))
}
