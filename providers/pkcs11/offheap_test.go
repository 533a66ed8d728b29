//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"testing"

	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
)

// TestBufferedInputOffHeap: what contexts buffer for one C_Sign lies
// outside the Go heap once it is a page or more, and frames their logs
// keep stay where they are (a caller holding thousands of such contexts
// would otherwise grow the heap, whose bookkeeping the runtime keeps for
// good); the tags come out right across the move off the heap, and every
// mapping is given back once the contexts end.
func TestBufferedInputOffHeap(t *testing.T) {
	p, _ := newToken(t, nil)
	bg := context.Background()
	secret := bytes.Repeat([]byte{7}, 32)
	if _, err := p.ImportKey(bg, "b", secret); err != nil {
		t.Fatal(err)
	}
	k, err := p.Key(bg, "b")
	if err != nil {
		t.Fatal(err)
	}
	frame.Trim()
	total0, _ := frame.Mapped()
	// Across the page at which input moves off the heap, in pieces that
	// came in no frame and in one that did.
	pieces := [][]byte{bytes.Repeat([]byte{1}, 100), bytes.Repeat([]byte{2}, 5000), bytes.Repeat([]byte{3}, 20000)}
	framed := bytes.Repeat([]byte{4}, 30000)
	want := hmac.New(sha256.New, secret)
	for _, p := range append(pieces, framed) {
		want.Write(p)
	}
	const n = 32
	var macs []providers.MAC
	for range n {
		m, err := k.NewMAC(bg, providers.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pieces {
			if err := m.Update(bg, p); err != nil {
				t.Fatal(err)
			}
		}
		mem, err := frame.Alloc(len(framed)) // as a frame the socket read
		if err != nil {
			t.Fatal(err)
		}
		copy(mem, framed)
		b := frame.Mapping(mem)
		if err := m.(providers.Retainer).UpdateRetained(bg, b.Bytes(), b); err != nil {
			t.Fatal(err)
		}
		b.Release() // the caller's reference: the context keeps its own
		macs = append(macs, m)
	}
	// Each buffer is a mapping of the buffer size (64 KiB); the log keeps
	// the frame, and its own copies of the rest on the heap.
	if total, _ := frame.Mapped(); total-total0 < n*(64<<10+30000) {
		t.Errorf("%d bytes mapped for %d contexts buffering 55,100 bytes each: the buffers are on the heap", total-total0, n)
	}
	// Off the heap, input is charged to its caller in the pages it takes.
	budget := providers.NewBudget(1<<20, nil, "test")
	ctx := providers.WithBudget(bg, budget)
	m, err := k.NewMAC(ctx, providers.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	m.Update(ctx, pieces[0])
	m.Update(ctx, pieces[1])
	// The buffer: 5100 bytes, in whole pages if a page or more; the log:
	// copies of 100 and 5000 bytes on the heap.
	if held, want := budget.Held(), int64(frame.Pages(5100)+100+5000); held != want {
		t.Errorf("%d bytes charged for 5100 buffered and logged, want %d", held, want)
	}
	// A frame the log keeps is charged by the memory it holds, which
	// for a pooled frame may be twice its bytes.
	roomy := frame.New(make([]byte, 30000, 60000), nil)
	if err := m.(providers.Retainer).UpdateRetained(ctx, roomy.Bytes(), roomy); err != nil {
		t.Fatal(err)
	}
	roomy.Release()
	if held, want := budget.Held(), int64(frame.Pages(35100)+100+5000+60000); held != want {
		t.Errorf("%d bytes charged with a 30,000-byte frame of 60,000 kept, want %d", held, want)
	}
	m.Close()
	if held := budget.Held(); held != 0 {
		t.Errorf("%d bytes charged after Close", held)
	}
	c, err := macs[0].Copy(bg)
	if err != nil {
		t.Fatal(err)
	}
	macs = append(macs, c)
	for i, m := range macs {
		tag, err := m.Finalize(bg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tag, want.Sum(nil)) {
			t.Fatalf("context %d: tag %x, want %x", i, tag, want.Sum(nil))
		}
		m.Close()
	}
	frame.Trim()
	if total, pooled := frame.Mapped(); total != total0 || pooled != 0 {
		t.Errorf("%d bytes still mapped after every context ended, want %d", total, total0)
	}
}
