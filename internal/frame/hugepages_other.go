//go:build !linux && (darwin || freebsd)

package frame

func noHugePages(b []byte) {}
