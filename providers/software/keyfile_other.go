//go:build !linux

package software

import (
	"path/filepath"

	"github.com/hmac-agent/hmac-agent/internal/privfile"
)

// createKeyFile writes data to a new file dir/name through a named
// temporary file (.NAME.tmp-*), which the agent removes at start: only
// Linux has O_TMPFILE.
func createKeyFile(dir, name string, data []byte) error {
	return privfile.Create(filepath.Join(dir, name), data)
}
