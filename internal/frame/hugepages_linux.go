package frame

import "golang.org/x/sys/unix"

// noHugePages keeps b in small pages: where transparent huge pages are
// always on, a fault in a frame's mapping could otherwise make two
// megabytes resident for the few bytes a peer sent.
func noHugePages(b []byte) { unix.Madvise(b, unix.MADV_NOHUGEPAGE) }
