package wire

import (
	"bytes"
	"encoding/hex"
	"os"
	"strings"
	"testing"
)

// TestProtocolDocExamples decodes every ```hex block in docs/protocol.md
// and checks it encodes back to the same bytes, so the document's examples
// are the protocol as the code speaks it.
func TestProtocolDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[Type]bool{}
	blocks := strings.Split(string(doc), "```hex\n")[1:]
	for _, block := range blocks {
		text, _, _ := strings.Cut(block, "```")
		frame, err := hex.DecodeString(strings.Join(strings.Fields(text), ""))
		if err != nil {
			t.Fatalf("example %q: %v", text, err)
		}
		var m Message
		if err := Decode(frame[4:], &m); err != nil {
			t.Fatalf("example %q: %v", text, err)
		}
		if n := int(frame[0])<<24 | int(frame[1])<<16 | int(frame[2])<<8 | int(frame[3]); n != len(frame)-4 {
			t.Errorf("example %q: length field %d, body %d bytes", text, n, len(frame)-4)
		}
		again, err := m.Append(nil)
		if err != nil || !bytes.Equal(again, frame) {
			t.Errorf("example %q re-encodes as %x (%v)", text, again, err)
		}
		seen[m.Type] = true
	}
	for t2 := range typeNames {
		if !seen[t2] {
			t.Errorf("docs/protocol.md has no example of %s", t2)
		}
	}
	t.Logf("%d examples, %d message types", len(blocks), len(seen))
}
