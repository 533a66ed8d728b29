package tpm

import (
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// TPM2_HMAC and TPM2_SequenceUpdate carry every byte a client sends, and
// go-tpm marshals byte buffers by reflection, a byte at a time (about
// 130 µs of CPU per KiB). These two are written by hand.

const (
	tagSessions      = 0x8002
	ccHMAC           = 0x00000155
	ccSequenceUpdate = 0x0000015C
	rsPW             = 0x40000009 // the password session
	algNull          = 0x0010
	// maxBuffer is TPM2B_MAX_BUFFER's size on swtpm and common TPMs.
	maxBuffer = 1024
)

// appendPasswordAuth appends an authorization area with one password
// session carrying auth.
func appendPasswordAuth(b []byte, auth []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(4+2+1+2+len(auth)))
	b = binary.BigEndian.AppendUint32(b, rsPW)
	b = binary.BigEndian.AppendUint16(b, 0) // nonceCaller
	b = append(b, 0x01)                     // continueSession
	b = binary.BigEndian.AppendUint16(b, uint16(len(auth)))
	return append(b, auth...)
}

// command builds a command with sessions: header, one handle, a password
// authorization and the parameters appended by params.
func command(dst []byte, cc uint32, handle tpm2.TPMHandle, auth []byte, params func([]byte) []byte) []byte {
	b := binary.BigEndian.AppendUint16(dst[:0], tagSessions)
	b = append(b, 0, 0, 0, 0) // size, filled in below
	b = binary.BigEndian.AppendUint32(b, cc)
	b = binary.BigEndian.AppendUint32(b, uint32(handle))
	b = appendPasswordAuth(b, auth)
	b = params(b)
	binary.BigEndian.PutUint32(b[2:6], uint32(len(b)))
	return b
}

// responseCode returns the response's error, if any.
func responseCode(rsp []byte) error {
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		return tpm2.TPMRC(rc)
	}
	return nil
}

// hmacOnce runs TPM2_HMAC on at most maxBuffer bytes with the key's own
// scheme and appends the digest, which must be size bytes, to dst.
func (p *Provider) hmacOnce(key tpm2.TPMHandle, auth, data, dst []byte, size int) ([]byte, error) {
	cmd := command(p.cmdBuf[:0], ccHMAC, key, auth, func(b []byte) []byte {
		b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
		b = append(b, data...)
		return binary.BigEndian.AppendUint16(b, algNull)
	})
	rsp, err := p.exchange(cmd)
	if err != nil {
		return nil, err
	}
	// header, parameterSize, TPM2B_DIGEST
	if len(rsp) < headerSize+4+2 {
		return nil, fmt.Errorf("tpm: TPM2_HMAC response of %d bytes", len(rsp))
	}
	n := int(binary.BigEndian.Uint16(rsp[14:16]))
	if len(rsp) < 16+n {
		return nil, fmt.Errorf("tpm: TPM2_HMAC response of %d bytes holds no %d-byte digest", len(rsp), n)
	}
	if n != size {
		// A digest of another length is no tag: taken for one, an empty
		// digest would verify an empty tag.
		return nil, fmt.Errorf("tpm: TPM2_HMAC gave a %d-byte digest where %d belong: %w", n, size, p.refused("the TPM answered a malformed digest"))
	}
	return append(dst, rsp[16:16+n]...), nil
}

// sequenceUpdate feeds at most maxBuffer bytes to an HMAC sequence, whose
// auth is empty.
func (p *Provider) sequenceUpdate(seq tpm2.TPMHandle, data []byte) error {
	cmd := command(p.cmdBuf[:0], ccSequenceUpdate, seq, nil, func(b []byte) []byte {
		b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
		return append(b, data...)
	})
	_, err := p.exchange(cmd)
	return err
}
