package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// Command size limits. swtpm and most TPMs take 4096 bytes at most; a
// longer command desynchronises the stream, so nothing longer is sent.
const (
	maxCommand  = 4096
	maxResponse = 4096
	headerSize  = 10 // tag, size, code
)

// transport is one persistent connection to a TPM that reads exactly one
// whole response per command. go-tpm's own transports read a response with
// a single Read, which can return half of it, and its Unix-socket
// transport reconnects for every command. A transport is used under the
// provider's lock.
//
// Every command must be answered within timeout. One that is not leaves
// the transport broken for good: its reply may still come, and read after
// a later command it would be taken for that command's reply, so the
// provider drops the connection and dials anew.
type transport struct {
	device  string // "/dev/tpmrm0", "unix:/path" or "tcp:host:port"
	timeout time.Duration
	rw      io.ReadWriteCloser
	// deadline sets the connection's I/O deadline; nil when the device
	// cannot have one, and a timer closes it instead.
	deadline func(time.Time) error
	broken   bool
	buf      [maxResponse]byte
}

// dial opens the device; the dial itself is bounded by timeout too.
func dial(device string, timeout time.Duration) (*transport, error) {
	var rw io.ReadWriteCloser
	var err error
	switch {
	case strings.HasPrefix(device, "unix:"):
		rw, err = net.DialTimeout("unix", strings.TrimPrefix(device, "unix:"), timeout)
	case strings.HasPrefix(device, "tcp:"):
		rw, err = net.DialTimeout("tcp", strings.TrimPrefix(device, "tcp:"), timeout)
	default:
		rw, err = os.OpenFile(device, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("tpm: open %s: %w", device, err)
	}
	t := &transport{device: device, timeout: timeout, rw: rw}
	if d, ok := rw.(interface{ SetDeadline(time.Time) error }); ok && d.SetDeadline(time.Time{}) == nil {
		t.deadline = d.SetDeadline
	}
	return t, nil
}

var (
	// errTransport marks a failure of the connection itself, after which
	// the TPM must be reached anew.
	errTransport = errors.New("tpm connection lost")
	// errTimeout marks a command the TPM did not answer in time. It is
	// also an errTransport.
	errTimeout = errors.New("the TPM did not answer in time")
)

// Response codes after which the same command is sent again.
const (
	rcRetry   = 0x922
	rcYielded = 0x908
	rcTesting = 0x90A
	retries   = 50
)

// Send sends one command and returns a copy of its whole response,
// resending it while the TPM answers TPM_RC_RETRY, YIELDED or TESTING. It
// implements go-tpm's transport.TPM; go-tpm may keep slices of the
// response, hence the copy.
func (t *transport) Send(cmd []byte) ([]byte, error) {
	rsp, err := t.exchange(cmd)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), rsp...), nil
}

// exchange is Send without the copy: the response is valid until the next
// command. The hand-marshalled hot paths use it.
func (t *transport) exchange(cmd []byte) ([]byte, error) {
	for i := 0; ; i++ {
		rsp, err := t.once(cmd)
		if err != nil {
			return nil, err
		}
		switch binary.BigEndian.Uint32(rsp[6:10]) {
		case rcRetry, rcYielded, rcTesting:
			if i < retries {
				time.Sleep(time.Duration(i+1) * time.Millisecond)
				continue
			}
		}
		return rsp, nil
	}
}

func (t *transport) once(cmd []byte) ([]byte, error) {
	if len(cmd) > maxCommand {
		return nil, fmt.Errorf("tpm: command of %d bytes exceeds %d", len(cmd), maxCommand)
	}
	if t.broken {
		return nil, fmt.Errorf("%w: an earlier command was cut", errTransport)
	}
	var expired atomic.Bool
	if t.timeout > 0 {
		if t.deadline != nil {
			t.deadline(time.Now().Add(t.timeout))
		} else {
			timer := time.AfterFunc(t.timeout, func() { expired.Store(true); t.rw.Close() })
			defer timer.Stop()
		}
	}
	rsp, err := t.roundTrip(cmd)
	if err != nil {
		// Whatever was cut, the stream is no longer in step with the
		// commands: never read from it again.
		t.broken = true
		if expired.Load() || errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("%w: %w: %w after %s", errTransport, errTimeout, err, t.timeout)
		}
		return nil, fmt.Errorf("%w: %w", errTransport, err)
	}
	return rsp, nil
}

func (t *transport) roundTrip(cmd []byte) ([]byte, error) {
	if _, err := t.rw.Write(cmd); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(t.rw, t.buf[:headerSize]); err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	n := int(binary.BigEndian.Uint32(t.buf[2:6]))
	if n < headerSize || n > maxResponse {
		return nil, fmt.Errorf("response of %d bytes", n)
	}
	if _, err := io.ReadFull(t.rw, t.buf[headerSize:n]); err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return t.buf[:n], nil
}

func (t *transport) Close() error { return t.rw.Close() }
