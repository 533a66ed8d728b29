package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/providers"
)

// TestFrameMemoryFollowsBytes: a peer that announces a large frame and
// sends little of it makes the reader hold about what it sent, not what
// it announced, and all of it is charged to the reader's budget.
func TestFrameMemoryFollowsBytes(t *testing.T) {
	const announced = 1 << 20
	pr, pw := io.Pipe()
	budget := providers.NewBudget(0, nil, "test")
	fr := NewFrameReader(bufio.NewReaderSize(pr, 16<<10), 16<<20)
	fr.SetBudget(budget)
	body := bytes.Repeat([]byte{0x42}, announced)
	hdr := binary.BigEndian.AppendUint32(nil, announced)
	got := make(chan []byte, 1)
	go func() {
		b, err := fr.Next()
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	pw.Write(hdr)
	pw.Write(body[:1000])
	time.Sleep(50 * time.Millisecond) // the reader waits for the rest
	if held := budget.Held(); held > firstChunk {
		t.Errorf("%d bytes held for a frame of which 1000 arrived, want at most %d", held, firstChunk)
	}
	pw.Write(body[1000:])
	if b := <-got; !bytes.Equal(b, body) {
		t.Fatal("body read wrong")
	}
	if held := budget.Held(); held < announced || held > 2*announced {
		t.Errorf("%d bytes charged for a whole frame of %d", held, announced)
	}
	b := fr.Take()
	if len(b.Bytes()) != announced {
		t.Fatalf("Take: %d bytes", len(b.Bytes()))
	}
	b.Release()
	if held := budget.Held(); held != 0 {
		t.Errorf("%d bytes still charged to the reader after Take", held)
	}
}

// TestFrameOverBudget: a frame the budget cannot hold fails with
// ErrLimit once its bytes pass the budget, and the reader holds nothing.
func TestFrameOverBudget(t *testing.T) {
	const announced = 1 << 20
	budget := providers.NewBudget(256<<10, nil, "test")
	var in bytes.Buffer
	in.Write(binary.BigEndian.AppendUint32(nil, announced))
	in.Write(make([]byte, announced))
	fr := NewFrameReader(bufio.NewReaderSize(&in, 16<<10), 16<<20)
	fr.SetBudget(budget)
	if _, err := fr.Next(); !errors.Is(err, providers.ErrLimit) {
		t.Fatalf("Next: %v, want ErrLimit", err)
	}
	fr.Free()
	if held := budget.Held(); held != 0 {
		t.Errorf("%d bytes charged after Free", held)
	}
}
