//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
	"github.com/hmac-agent/hmac-agent/providers/pkcs11"
)

// TestStreamingContextsKeepAShare: a context that streams keeps a
// session until it ends, so all contexts together may not keep the last
// quarter of the pool, and one caller's not the last of the rest. One
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
	if st := p.Sessions(); st.Kept != 5 || st.InUse != 5 {
		t.Errorf("one caller's 8 streaming contexts keep %d sessions (%d in use), want 5 of 8", st.Kept, st.InUse)
	}
	if held := hog.Held(); held < 3*int64(len(input)) {
		t.Errorf("%d bytes charged for 3 contexts buffering %d bytes each", held, len(input))
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
	if st := p.Sessions(); st.Kept != 6 {
		t.Errorf("%d sessions kept with another caller streaming too, want 6", st.Kept)
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

// TestStreamWaitsForASession: a context allowed to keep a session waits
// for one in its caller's line, and if none frees up within
// session_wait, fails and gives its place among the kept back.
func TestStreamWaitsForASession(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) {
		c.Sessions = 4
		c.SessionWait = 200 * time.Millisecond
		c.BufferBytes = 16
	})
	bg := context.Background()
	p.ImportKey(bg, "w", []byte("stream-wait"))
	k, _ := p.Key(bg, "w")
	big := make([]byte, 100)
	a := providers.WithBudget(bg, providers.NewBudget(0, nil, "a"))
	streaming, _ := k.NewMAC(a, providers.SHA256)
	if err := streaming.Update(a, big); err != nil {
		t.Fatal(err)
	}
	for range 3 { // the rest, as long calls hold them
		t.Cleanup(pkcs11.TakeSession(t, p))
	}
	budget := providers.NewBudget(0, nil, "b")
	b := providers.WithBudget(bg, budget)
	m, _ := k.NewMAC(b, providers.SHA256)
	start := time.Now()
	if err := m.Update(b, big); !errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("a stream with no session free: %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("gave up after %s, before the configured wait", d)
	}
	if kept := p.Sessions().Kept; kept != 1 {
		t.Errorf("%d sessions kept after the stream that got none failed, want 1", kept)
	}
	m.Close()
	streaming.Close()
	if kept, held := p.Sessions().Kept, budget.Held(); kept != 0 || held != 0 {
		t.Errorf("after Close: %d sessions kept, %d bytes charged", kept, held)
	}
}

// TestBufferingStreamWaitsForItsShare: a caller's stream past its share of
// the sessions buffers in memory only while the caller's budget is at
// most half spent, so that the caller's frames and requests still find
// room; then it waits for one of the caller's streams to end and streams
// in its place. Buffering until the budget was full failed a caller's
// six parallel 70 MB streams, and its other requests with them.
func TestBufferingStreamWaitsForItsShare(t *testing.T) {
	p, _ := newToken(t, func(c *pkcs11.Config) {
		c.Sessions = 4 // 3 kept at most, 2 for one caller
		c.SessionWait = 5 * time.Second
	})
	bg := context.Background()
	secret := []byte("share-wait")
	p.ImportKey(bg, "q", secret)
	k, _ := p.Key(bg, "q")
	budget := providers.NewBudget(512<<10, nil, "caller")
	ctx := providers.WithBudget(bg, budget)
	piece := bytes.Repeat([]byte{1}, 64<<10)
	var streaming []providers.MAC
	for range 2 {
		m, _ := k.NewMAC(ctx, providers.SHA256)
		if err := m.Update(ctx, append(piece, 0)); err != nil {
			t.Fatal(err)
		}
		streaming = append(streaming, m)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		streaming[0].Finalize(bg)
		streaming[0].Close()
	}()
	third, _ := k.NewMAC(ctx, providers.SHA256)
	want := hmac.New(sha256.New, secret)
	var most int64
	for i := range 32 { // 2 MiB, four times the budget
		if err := third.Update(ctx, piece); err != nil {
			t.Fatalf("update %d of a stream past its caller's share: %v", i, err)
		}
		want.Write(piece)
		most = max(most, budget.Held())
	}
	if most > budget.Max()/2 {
		t.Errorf("a stream waiting for its share held %d bytes of a budget of %d: more than half", most, budget.Max())
	}
	if tag, err := third.Finalize(bg); err != nil || !bytes.Equal(tag, want.Sum(nil)) {
		t.Errorf("Finalize: %x, %v", tag, err)
	}
	third.Close()
	streaming[1].Close()
	if kept, held := p.Sessions().Kept, budget.Held(); kept != 0 || held != 0 {
		t.Errorf("after every context ended: %d sessions kept, %d bytes charged", kept, held)
	}
}
