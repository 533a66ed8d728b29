package tpm_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

// shortDigestTPM listens on a Unix socket in front of sw and passes
// commands through, but answers every successful TPM2_HMAC and
// TPM2_SequenceComplete with an empty digest, as a faulty TPM might. It
// returns the device string to open.
func shortDigestTPM(t *testing.T, sw *swtpm.TPM) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "faulty.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	readMsg := func(r io.Reader) ([]byte, error) {
		h := make([]byte, 10)
		if _, err := io.ReadFull(r, h); err != nil {
			return nil, err
		}
		b := make([]byte, binary.BigEndian.Uint32(h[2:6]))
		copy(b, h)
		_, err := io.ReadFull(r, b[10:])
		return b, err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("unix", sw.Socket)
				if err != nil {
					return
				}
				defer up.Close()
				for {
					cmd, err := readMsg(c)
					if err != nil {
						return
					}
					if _, err := up.Write(cmd); err != nil {
						return
					}
					rsp, err := readMsg(up)
					if err != nil {
						return
					}
					cc := binary.BigEndian.Uint32(cmd[6:10])
					rc := binary.BigEndian.Uint32(rsp[6:10])
					if rc == 0 && (cc == 0x155 || cc == 0x13E) { // TPM2_HMAC, TPM2_SequenceComplete
						// header, parameterSize, parameters (the digest
						// first), sessions
						size := binary.BigEndian.Uint32(rsp[10:14])
						params, sessions := rsp[14:14+size], rsp[14+size:]
						n := int(binary.BigEndian.Uint16(params[0:2]))
						out := append([]byte(nil), rsp[:10]...)
						out = binary.BigEndian.AppendUint32(out, size-uint32(n))
						out = binary.BigEndian.AppendUint16(out, 0)
						out = append(out, params[2+n:]...)
						out = append(out, sessions...)
						binary.BigEndian.PutUint32(out[2:6], uint32(len(out)))
						rsp = out
					}
					if _, err := c.Write(rsp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return "unix:" + path
}

// TestShortDigestFromTPM: a TPM that answers TPM2_HMAC with a digest of
// the wrong length (here empty) must not have that taken for a tag. A MAC
// fails, and above all a verify of an empty tag must not succeed.
func TestShortDigestFromTPM(t *testing.T) {
	sw := swtpm.Require(t)
	state := filepath.Join(t.TempDir(), "state")
	p := openWith(t, sw, state, func(c *tpm.Config) { c.Device = shortDigestTPM(t, sw) })
	ctx := context.Background()
	if _, err := p.ImportKey(ctx, "k", []byte("faulty device key")); err != nil {
		t.Fatal(err)
	}
	k, err := p.Key(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{10, 5000} { // one TPM2_HMAC; a sequence
		msg := make([]byte, size)
		m, err := k.NewMAC(ctx, providers.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		m.Update(ctx, msg)
		if err := m.Verify(ctx, nil); err == nil {
			t.Errorf("%d bytes: an empty tag verified against the TPM's empty digest", size)
		}
		m.Close()
		m, _ = k.NewMAC(ctx, providers.SHA256)
		m.Update(ctx, msg)
		tag, err := m.Finalize(ctx)
		if err == nil || errors.Is(err, providers.ErrInvalidSignature) {
			t.Errorf("%d bytes: Finalize gave a %d-byte tag, err %v; want an error", size, len(tag), err)
		}
		m.Close()
	}
}
