package main

import (
	"net"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

// tpmDirect is go-tpm used directly, in this process, on the same swtpm
// (before the agent connects: swtpm serves one connection at a time),
// with go-tpm's own marshalling over one persistent connection.
type tpmDirect struct {
	conn net.Conn
	t    transport.TPM
	srk  tpm2.TPMHandle
	key  tpm2.AuthHandle
}

func openTPMDirect(sw *swtpm.TPM) (*tpmDirect, error) {
	conn, err := net.Dial("unix", sw.Socket)
	if err != nil {
		return nil, err
	}
	t := transport.FromReadWriter(conn)
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(t)
	if err != nil {
		conn.Close()
		return nil, err
	}
	tmpl := tpm.HMACTemplate(providers.SHA256, tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true})
	parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
	created, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(tmpl)}.Execute(t)
	if err != nil {
		conn.Close()
		return nil, err
	}
	loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: created.OutPrivate, InPublic: created.OutPublic}.Execute(t)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &tpmDirect{conn: conn, t: t, srk: srk.ObjectHandle,
		key: tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: tpm2.PasswordAuth(nil)}}, nil
}

// oneShot is TPM2_HMAC of 64 bytes, ops/s.
func (d *tpmDirect) oneShot(dur time.Duration) (float64, error) {
	msg := make([]byte, 64)
	n := 0
	start := time.Now()
	for time.Since(start) < dur {
		if _, err := (tpm2.Hmac{Handle: d.key, Buffer: tpm2.TPM2BMaxBuffer{Buffer: msg}, HashAlg: tpm2.TPMAlgNull}).Execute(d.t); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// stream is an HMAC sequence over size bytes in 1024-byte updates, MB/s.
func (d *tpmDirect) stream(size int) (float64, error) {
	data := make([]byte, 1024)
	start := time.Now()
	seq, err := tpm2.HmacStart{Handle: d.key, HashAlg: tpm2.TPMAlgNull}.Execute(d.t)
	if err != nil {
		return 0, err
	}
	sh := tpm2.AuthHandle{Handle: seq.SequenceHandle, Auth: tpm2.PasswordAuth(nil)}
	for n := 0; n < size; n += len(data) {
		if _, err := (tpm2.SequenceUpdate{SequenceHandle: sh, Buffer: tpm2.TPM2BMaxBuffer{Buffer: data}}).Execute(d.t); err != nil {
			return 0, err
		}
	}
	if _, err := (tpm2.SequenceComplete{SequenceHandle: sh, Hierarchy: tpm2.TPMRHNull}).Execute(d.t); err != nil {
		return 0, err
	}
	return float64(size) / 1e6 / time.Since(start).Seconds(), nil
}

// close flushes what it loaded and hangs up, leaving the TPM to the agent.
func (d *tpmDirect) close() {
	tpm2.FlushContext{FlushHandle: d.key.Handle}.Execute(d.t)
	tpm2.FlushContext{FlushHandle: d.srk}.Execute(d.t)
	d.conn.Close()
}
