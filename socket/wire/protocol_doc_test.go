package wire

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
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

// TestProtocolDocAlgorithms checks docs/protocol.md's algorithm table
// against providers' table, row for row, so a client written from the
// document speaks the codes the agent does.
func TestProtocolDocAlgorithms(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(doc), "| code | name | tag bytes | block bytes |\n| --- | --- | --- | --- |\n")
	if !ok {
		t.Fatal("docs/protocol.md has no algorithm table")
	}
	var rows []string
	for _, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "|") {
			break
		}
		rows = append(rows, line)
	}
	var want []string
	for _, alg := range providers.Algorithms() {
		want = append(want, fmt.Sprintf("| %d | %s | %d | %d |", alg, alg, alg.Size(), alg.BlockSize()))
	}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("docs/protocol.md's algorithm table:\n%s\nwant:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
}
