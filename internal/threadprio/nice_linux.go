package threadprio

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// setNice sets the calling thread's nice value.
func setNice(n int) error {
	return unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), n)
}

// ThreadNice reads thread tid's nice value from /proc, for tests and
// diagnostics: which of the process's threads run lowered now.
func ThreadNice(tid int) (int, error) {
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which may hold spaces: the
	// nice value is the 19th of stat(5), the 17th after the name.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return 0, fmt.Errorf("threadprio: malformed stat of thread %d", tid)
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 17 {
		return 0, fmt.Errorf("threadprio: malformed stat of thread %d", tid)
	}
	return strconv.Atoi(f[16])
}

// Thread is the calling thread's id: while a goroutine runs in the
// background (Background locks it to its thread), a goroutine that finds
// the id it recorded there is that goroutine.
func Thread() int { return unix.Gettid() }
