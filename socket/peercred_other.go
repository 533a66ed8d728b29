//go:build !linux

package socket

import (
	"errors"
	"net"
	"time"

	"github.com/hmac-agent/hmac-agent/agent"
)

// peerOf cannot read credentials off Linux; such a peer is allowed nothing.
func peerOf(c net.Conn, need agent.IdentityNeed, hashTimeout time.Duration) (agent.Peer, error) {
	return agent.Peer{}, nil
}

// CheckIdentitySupport says that off Linux no condition on a caller's
// process can be judged.
func CheckIdentitySupport(cgroups, executables bool) error {
	if !cgroups && !executables {
		return nil
	}
	return errors.New("a caller's unit, cgroup and executable can only be read on Linux")
}
