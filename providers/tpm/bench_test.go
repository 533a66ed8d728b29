package tpm_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/hmac-agent/hmac-agent/client"
	"github.com/hmac-agent/hmac-agent/internal/agenttest"
	"github.com/hmac-agent/hmac-agent/internal/swtpm"
	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/tpm"
)

// The benchmarks put the agent beside go-tpm used directly, in-process, on
// the same swtpm: go-tpm's own marshalling over one persistent
// connection. swtpm serves one connection at a time, so the two run one
// after the other. Run with
//
//	go test ./providers/tpm -run '^$' -bench . -benchtime 2s

// directKey connects with go-tpm and loads an HMAC-SHA256 key under a
// fresh storage key.
func directKey(b *testing.B, sw *swtpm.TPM) (transport.TPM, tpm2.AuthHandle, func()) {
	b.Helper()
	conn, err := net.Dial("unix", sw.Socket)
	if err != nil {
		b.Fatal(err)
	}
	t := transport.FromReadWriter(conn)
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(t)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := tpm.HMACTemplate(providers.SHA256, tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true})
	parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
	created, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(tmpl)}.Execute(t)
	if err != nil {
		b.Fatal(err)
	}
	loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: created.OutPrivate, InPublic: created.OutPublic}.Execute(t)
	if err != nil {
		b.Fatal(err)
	}
	key := tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: tpm2.PasswordAuth(nil)}
	return t, key, func() {
		tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(t)
		tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(t)
		conn.Close()
	}
}

func agentClient(b *testing.B, sw *swtpm.TPM) *client.Client {
	b.Helper()
	p, err := tpm.Open(context.Background(), tpm.Config{Name: "tpm", Device: sw.Device(), StateDir: filepath.Join(b.TempDir(), "state")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	if _, err := p.GenerateKey(context.Background(), "bench", 0); err != nil {
		b.Fatal(err)
	}
	a := agenttest.Start(b, agenttest.Options{Providers: []providers.Provider{p}})
	c, err := client.Dial(context.Background(), a.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

func BenchmarkOneShot64(b *testing.B) {
	sw := swtpm.Require(b)
	msg := make([]byte, 64)
	b.Run("direct", func(b *testing.B) {
		t, key, done := directKey(b, sw)
		defer done()
		for b.Loop() {
			if _, err := (tpm2.Hmac{Handle: key, Buffer: tpm2.TPM2BMaxBuffer{Buffer: msg}, HashAlg: tpm2.TPMAlgNull}).Execute(t); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("agent", func(b *testing.B) {
		c := agentClient(b, sw)
		for b.Loop() {
			if _, err := c.MAC(context.Background(), "bench", client.SHA256, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkStream feeds 1 MiB per iteration: SequenceUpdate in 1024-byte
// commands directly, 64 KiB updates through the agent.
func BenchmarkStream(b *testing.B) {
	sw := swtpm.Require(b)
	const perOp = 1 << 20
	data := make([]byte, perOp)
	b.Run("direct", func(b *testing.B) {
		t, key, done := directKey(b, sw)
		defer done()
		seq, err := tpm2.HmacStart{Handle: key, HashAlg: tpm2.TPMAlgNull}.Execute(t)
		if err != nil {
			b.Fatal(err)
		}
		sh := tpm2.AuthHandle{Handle: seq.SequenceHandle, Auth: tpm2.PasswordAuth(nil)}
		b.SetBytes(perOp)
		for b.Loop() {
			for off := 0; off < perOp; off += 1024 {
				if _, err := (tpm2.SequenceUpdate{SequenceHandle: sh, Buffer: tpm2.TPM2BMaxBuffer{Buffer: data[off : off+1024]}}).Execute(t); err != nil {
					b.Fatal(err)
				}
			}
		}
		if _, err := (tpm2.SequenceComplete{SequenceHandle: sh, Hierarchy: tpm2.TPMRHNull}).Execute(t); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("agent", func(b *testing.B) {
		c := agentClient(b, sw)
		ctx := context.Background()
		h, err := c.New(ctx, "bench", client.SHA256)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(perOp)
		b.ResetTimer()
		for range b.N {
			for off := 0; off < perOp; off += 64 << 10 {
				if err := h.Update(data[off : off+64<<10]); err != nil {
					b.Fatal(err)
				}
			}
		}
		// Updates do not wait; Finalize is timed so queued work counts.
		if _, err := h.Finalize(ctx); err != nil {
			b.Fatal(err)
		}
	})
}
