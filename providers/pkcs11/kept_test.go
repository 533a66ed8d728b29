//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// TestStreamingContextsKeepAShare: a context that streams keeps a
// session until it ends, so one caller's contexts may keep only a share
// of the pool, and all of them together not the last quarter. One
// caller with eight contexts that each streamed a byte past the buffer
// held all eight sessions, and every other caller's request waited
// session_wait and failed. Contexts past the share go on buffering in
// memory, charged to their caller, and their tags come out the same.
func TestStreamingContextsKeepAShare(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) {
		c.Sessions = 8
		c.SessionWait = 300 * time.Millisecond
	})
	bg := context.Background()
	secret := bytes.Repeat([]byte{9}, 32)
	if _, err := p.ImportKey(bg, "s", secret); err != nil {
		t.Fatal(err)
	}
	k, err := p.Key(bg, "s")
	if err != nil {
		t.Fatal(err)
	}
	hog := providers.NewBudget(1<<30, nil, "hog")
	hogCtx := providers.WithBudget(bg, hog)
	input := bytes.Repeat([]byte{5}, pkcs11.DefaultBufferBytes+1)
	want := hmac.New(sha256.New, secret)
	want.Write(input)
	var hogs []providers.MAC
	for range 8 {
		m, err := k.NewMAC(hogCtx, providers.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Update(hogCtx, input); err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, m)
	}
	if st := p.Sessions(); st.Kept != 3 || st.InUse != 3 {
		t.Errorf("one caller's 8 streaming contexts keep %d sessions (%d in use), want 3 of 8", st.Kept, st.InUse)
	}
	if held := hog.Held(); held < 5*int64(len(input)) {
		t.Errorf("%d bytes charged for 5 contexts buffering %d bytes each", held, len(input))
	}
	// A copy of a streaming context, its caller at its share, buffers.
	c, err := hogs[0].Copy(hogCtx)
	if err != nil {
		t.Fatal(err)
	}
	hogs = append(hogs, c)

	// Another caller is served: one-shots, and a context of its own that
	// streams.
	other := providers.WithBudget(bg, providers.NewBudget(1<<30, nil, "other"))
	for range 20 {
		if _, err := k.(providers.OneShot).SumMAC(other, providers.SHA256, []byte("x"), nil); err != nil {
			t.Fatalf("another caller's one-shot: %v", err)
		}
	}
	m, err := k.NewMAC(other, providers.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(other, input); err != nil {
		t.Fatal(err)
	}
	if st := p.Sessions(); st.Kept != 4 {
		t.Errorf("%d sessions kept with another caller streaming too, want 4", st.Kept)
	}
	hogs = append(hogs, m)

	// More data on a context that buffers, then every tag.
	more := bytes.Repeat([]byte{6}, 1000)
	if err := hogs[7].Update(hogCtx, more); err != nil {
		t.Fatal(err)
	}
	for i, m := range hogs {
		w := hmac.New(sha256.New, secret)
		w.Write(input)
		if i == 7 {
			w.Write(more)
		}
		tag, err := m.Finalize(bg)
		if err != nil {
			t.Fatalf("context %d: %v", i, err)
		}
		if !bytes.Equal(tag, w.Sum(nil)) {
			t.Errorf("context %d: wrong tag", i)
		}
		m.Close()
	}
	if st := p.Sessions(); st.Kept != 0 || st.InUse != 0 {
		t.Errorf("%d sessions kept, %d in use after every context ended", st.Kept, st.InUse)
	}
	if held := hog.Held(); held != 0 {
		t.Errorf("%d bytes still charged after every context ended", held)
	}
}
