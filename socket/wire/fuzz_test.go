package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/hmac-agent/hmac-agent/providers"
)

// seedMessages is one of every message, for the fuzzers' seeds and the
// round-trip test.
func seedMessages() []Message {
	return []Message{
		{Type: TypeHello, ID: 1, MinVersion: 1, MaxVersion: 1},
		{Type: TypeOpen, ID: 2, Context: 1, Algorithm: 3, Key: []byte("webhook")},
		{Type: TypeUpdate, ID: 3, Context: 1, Data: []byte("hello")},
		{Type: TypeUpdate, ID: 4, Context: 1, Data: []byte{}},
		{Type: TypeCopy, ID: 5, Context: 1, NewContext: 2},
		{Type: TypeFinalize, ID: 6, Context: 2},
		{Type: TypeVerify, ID: 7, Context: 1, Tag: bytes.Repeat([]byte{0xab}, 32)},
		{Type: TypeClose, ID: 8, Context: 9},
		{Type: TypeMAC, ID: 9, Algorithm: 3, Key: []byte("webhook"), Data: []byte("payload")},
		{Type: TypeVerifyMAC, ID: 10, Algorithm: 5, Key: []byte("k"), Tag: []byte{1, 2, 3}, Data: []byte("payload")},
		{Type: TypeListKeys, ID: 11},
		{Type: TypeGenerateKey, ID: 12, Provider: []byte("hsm"), Key: []byte("new"), Length: 32},
		{Type: TypeImportKey, ID: 13, Key: []byte("imported"), Data: []byte("secret")},
		{Type: TypeDeleteKey, ID: 14, Key: []byte("old")},
		{Type: TypeImportWrapped, ID: 17, Provider: []byte("hsm"), Key: []byte("k"), Wrapping: []byte("kek"), Data: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
		{Type: TypeStatus, ID: 15},
		{Type: TypeOK, ID: 16},
		{Type: TypeHelloReply, ID: 1, Version: 1, MaxFrame: 1 << 20, MaxContexts: 16384, MaxInFlight: 256},
		{Type: TypeTag, ID: 9, Tag: bytes.Repeat([]byte{0xcd}, 32)},
		{Type: TypeData, ID: 11, Data: []byte(`[{"name":"webhook"}]`)},
		{Type: TypeError, ID: 2, Code: 4, Data: []byte(`key "webhook" not found`)},
		{Type: TypeHello, ID: 1, MinVersion: 1, MaxVersion: 2},
		{Type: TypeMAC, ID: 18, Algorithm: 3, Key: []byte("webhook@2"), Data: []byte("payload")},
		{Type: TypeRotateKey, ID: 19, Key: []byte("webhook")},
		{Type: TypeRotateKey, ID: 20, Provider: []byte("hsm"), Key: []byte("webhook"), Length: 48, Flags: FlagImport, Data: []byte("secret")},
		{Type: TypeRetireVersion, ID: 21, Key: []byte("webhook"), KeyVersion: 1, Flags: FlagDestroy},
		{Type: TypeTagVersion, ID: 9, KeyVersion: 2, Tag: bytes.Repeat([]byte{0xcd}, 32)},
		{Type: TypeVerified, ID: 10, KeyVersion: 1},
	}
}

// normalize makes empty and nil slices compare equal.
func normalize(m Message) Message {
	for _, f := range []*[]byte{&m.Key, &m.Provider, &m.Wrapping, &m.Tag, &m.Data} {
		if len(*f) == 0 {
			*f = nil
		}
	}
	return m
}

func TestRoundTrip(t *testing.T) {
	for _, m := range seedMessages() {
		b, err := m.Append(nil)
		if err != nil {
			t.Fatalf("%s: %v", m.Type, err)
		}
		var got Message
		if err := Decode(b[4:], &got); err != nil {
			t.Fatalf("%s: %v", m.Type, err)
		}
		if !reflect.DeepEqual(normalize(got), normalize(m)) {
			t.Errorf("%s: round trip gave %+v", m.Type, got)
		}
	}
}

// FuzzDecode: any body either fails to decode or decodes to a message
// that encodes back to the same body.
func FuzzDecode(f *testing.F) {
	for _, m := range seedMessages() {
		b, _ := m.Append(nil)
		f.Add(b[4:])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var m Message
		if err := Decode(body, &m); err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownType) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		b, err := m.Append(nil)
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", m, err)
		}
		if !bytes.Equal(b[4:], body) {
			t.Fatalf("re-encoding changed the body:\n in %x\nout %x", body, b[4:])
		}
	})
}

// FuzzFrameReader: any byte stream yields the frames it holds, each no
// larger than the limit, or an error, and never a panic; what the reader
// charges its budget it gives back. Half the readers read large frames
// into mapped memory.
func FuzzFrameReader(f *testing.F) {
	var stream []byte
	for _, m := range seedMessages() {
		stream, _ = m.Append(stream)
	}
	f.Add(stream, uint16(4096), uint8(16))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 5, 1, 0, 0, 0, 1}, uint16(4096), uint8(16))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, uint16(4096), uint8(16))
	f.Add([]byte{0, 0, 0x20, 0, 0x11}, uint16(9000), uint8(16))
	f.Fuzz(func(t *testing.T, stream []byte, maxFrame uint16, bufSize uint8) {
		max := int(maxFrame)
		br := bufio.NewReaderSize(bytes.NewReader(stream), 16+int(bufSize))
		fr := NewFrameReader(br, max)
		if bufSize&4 != 0 {
			fr.UseMappedMemory()
		}
		// A budget from none (bufSize%4 == 0) to a few frames' worth.
		budget := providers.NewBudget(int64(max)*int64(bufSize%4)/2, nil, "fuzz")
		fr.SetBudget(budget)
		defer func() {
			fr.Free()
			if held := budget.Held(); held != 0 {
				t.Fatalf("%d bytes still charged after Free", held)
			}
		}()
		rest := stream // what a reference parse has left
		for range 1000 {
			body, err := fr.Next()
			if errors.Is(err, ErrEmptyFrame) {
				rest = rest[4:]
				continue
			}
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrFrameTooLarge) || errors.Is(err, providers.ErrLimit) {
					return
				}
				t.Fatalf("unexpected error: %v", err)
			}
			if len(body) == 0 || len(body) > max {
				t.Fatalf("frame of %d bytes with limit %d", len(body), max)
			}
			n := int(binary.BigEndian.Uint32(rest))
			if n != len(body) || !bytes.Equal(body, rest[4:4+n]) {
				t.Fatalf("frame of %d bytes read as %d different bytes", n, len(body))
			}
			rest = rest[4+n:]
			var m Message
			Decode(body, &m)
		}
	})
}
