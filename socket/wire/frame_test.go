package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/frame"
	"github.com/hmac-agent/hmac-agent/providers"
)

// bothMemories runs f with a reader on the Go heap and one with
// UseMappedMemory.
func bothMemories(t *testing.T, f func(t *testing.T, newReader func(io.Reader) *FrameReader)) {
	for _, mapped := range []bool{false, true} {
		t.Run(map[bool]string{false: "Heap", true: "Mapped"}[mapped], func(t *testing.T) {
			f(t, func(r io.Reader) *FrameReader {
				fr := NewFrameReader(bufio.NewReaderSize(r, 16<<10), 16<<20)
				if mapped {
					fr.UseMappedMemory()
				}
				return fr
			})
		})
	}
}

// TestFrameMemoryFollowsBytes: a peer that announces a large frame and
// sends little of it makes the reader hold about what it sent, not what
// it announced, and all of it is charged to the reader's budget.
func TestFrameMemoryFollowsBytes(t *testing.T) {
	bothMemories(t, testFrameMemoryFollowsBytes)
}

func testFrameMemoryFollowsBytes(t *testing.T, newReader func(io.Reader) *FrameReader) {
	const announced = 1 << 20
	pr, pw := io.Pipe()
	budget := providers.NewBudget(0, nil, "test")
	fr := newReader(pr)
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
	bothMemories(t, testFrameOverBudget)
}

func testFrameOverBudget(t *testing.T, newReader func(io.Reader) *FrameReader) {
	const announced = 1 << 20
	budget := providers.NewBudget(256<<10, nil, "test")
	var in bytes.Buffer
	in.Write(binary.BigEndian.AppendUint32(nil, announced))
	in.Write(make([]byte, announced))
	fr := newReader(&in)
	fr.SetBudget(budget)
	if _, err := fr.Next(); !errors.Is(err, providers.ErrLimit) {
		t.Fatalf("Next: %v, want ErrLimit", err)
	}
	fr.Free()
	if held := budget.Held(); held != 0 {
		t.Errorf("%d bytes charged after Free", held)
	}
}

// TestMappedFramesGivenBack: a mapped reader reads frames of any size in
// turn, reusing its buffer or the pool's, hands over frames whole with
// Take, charges its budget only while it holds a buffer, and gives every
// buffer back: what is mapped at the end is only the pool, which Trim
// empties.
func TestMappedFramesGivenBack(t *testing.T) {
	frame.Trim()
	total0, _ := frame.Mapped()
	budget := providers.NewBudget(0, nil, "test")
	var in bytes.Buffer
	sizes := []int{100 << 10, 40 << 10, 900 << 10, 900 << 10, 20 << 10, 300 << 10}
	for i, n := range sizes {
		in.Write(binary.BigEndian.AppendUint32(nil, uint32(n)))
		in.Write(bytes.Repeat([]byte{byte(i + 1)}, n))
	}
	fr := NewFrameReader(bufio.NewReaderSize(&in, 16<<10), 16<<20)
	fr.UseMappedMemory()
	fr.SetBudget(budget)
	var taken []*frame.Buffer
	for i, n := range sizes {
		body, err := fr.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body, bytes.Repeat([]byte{byte(i + 1)}, n)) {
			t.Fatalf("frame %d read wrong", i)
		}
		if i%2 == 1 {
			b := fr.Take()
			if !bytes.Equal(b.Bytes(), body) {
				t.Fatalf("frame %d: Take handed over %d bytes, not the frame", i, len(b.Bytes()))
			}
			taken = append(taken, b)
		}
	}
	for _, b := range taken {
		b.Release()
	}
	fr.Release()
	if held := budget.Held(); held != 0 {
		t.Errorf("%d bytes charged to a reader gone idle", held)
	}
	fr.Free()
	if total, pooled := frame.Mapped(); total-pooled != total0 {
		t.Errorf("%d bytes of frames held after every one was given back", total-pooled-total0)
	}
	frame.Trim()
	if total, _ := frame.Mapped(); total != total0 {
		t.Errorf("%d bytes mapped after Trim, want %d", total, total0)
	}
}
