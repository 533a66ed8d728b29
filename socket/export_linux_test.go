//go:build linux

package socket

// WithoutPeerPidfd makes connections' peers be pinned as on kernels
// without SO_PEERPIDFD, until restore is called.
func WithoutPeerPidfd() (restore func()) {
	withoutPeerPidfd.Store(true)
	return func() { withoutPeerPidfd.Store(false) }
}
