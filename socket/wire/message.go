package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the newest protocol version this package speaks, and
// MinVersion the oldest. Version 2 adds key versions: TAG_VERSION and
// VERIFIED replies in place of TAG and OK for MAC, FINALIZE, VERIFY and
// VERIFY_MAC. Both sides speak the highest version in both ranges, so a
// client of version 1 is served exactly as before.
const (
	Version    = 2
	MinVersion = 1
)

// VersionKeyVersions is the first protocol version with key versions.
const VersionKeyVersions = 2

// Magic opens every HELLO, so that a peer speaking something else is
// rejected at once.
const Magic = "HMAC"

// Frame sizes. A frame is a 4-byte big-endian length and a body of that
// many bytes; the body starts with the type and the request ID.
const (
	HeaderSize      = 4 + 1 + 4 // length, type, request ID
	DefaultMaxFrame = 1 << 20   // body bytes
	MinMaxFrame     = 4096
	// MaxHelloFrame bounds a frame before the handshake is done. A HELLO
	// body is 13 bytes; the rest is room for later versions' fields.
	MaxHelloFrame = 64
	MaxKeyName    = 255 // a key or provider name is prefixed by one byte
	MaxTag        = 255
)

// Type is a message type. Requests are below 0x80, replies at or above.
type Type uint8

// Requests.
const (
	TypeHello         Type = 0x01
	TypeOpen          Type = 0x10
	TypeUpdate        Type = 0x11
	TypeCopy          Type = 0x12
	TypeFinalize      Type = 0x13
	TypeVerify        Type = 0x14
	TypeClose         Type = 0x15
	TypeMAC           Type = 0x20
	TypeVerifyMAC     Type = 0x21
	TypeListKeys      Type = 0x30
	TypeGenerateKey   Type = 0x31
	TypeImportKey     Type = 0x32
	TypeDeleteKey     Type = 0x33
	TypeStatus        Type = 0x34
	TypeImportWrapped Type = 0x35
	TypeRotateKey     Type = 0x36
	TypeRetireVersion Type = 0x37
)

// Replies.
const (
	TypeOK         Type = 0x80
	TypeHelloReply Type = 0x81
	TypeTag        Type = 0x82
	TypeData       Type = 0x83
	TypeTagVersion Type = 0x84 // protocol version 2
	TypeVerified   Type = 0x85 // protocol version 2
	TypeError      Type = 0x8F
)

// Flags of ROTATE_KEY and RETIRE_VERSION.
const (
	FlagImport  uint8 = 1 << 0 // ROTATE_KEY: the new version is Data, not generated
	FlagDestroy uint8 = 1 << 0 // RETIRE_VERSION: delete the version's object too
)

var typeNames = map[Type]string{
	TypeHello: "HELLO", TypeOpen: "OPEN", TypeUpdate: "UPDATE", TypeCopy: "COPY",
	TypeFinalize: "FINALIZE", TypeVerify: "VERIFY", TypeClose: "CLOSE",
	TypeMAC: "MAC", TypeVerifyMAC: "VERIFY_MAC", TypeListKeys: "LIST_KEYS",
	TypeGenerateKey: "GENERATE_KEY", TypeImportKey: "IMPORT_KEY",
	TypeDeleteKey: "DELETE_KEY", TypeStatus: "STATUS", TypeImportWrapped: "IMPORT_WRAPPED",
	TypeRotateKey: "ROTATE_KEY", TypeRetireVersion: "RETIRE_VERSION", TypeOK: "OK",
	TypeHelloReply: "HELLO_REPLY", TypeTag: "TAG", TypeData: "DATA", TypeError: "ERROR",
	TypeTagVersion: "TAG_VERSION", TypeVerified: "VERIFIED",
}

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type(0x%02x)", uint8(t))
}

// Known reports whether t is a defined message type.
func (t Type) Known() bool { _, ok := typeNames[t]; return ok }

// Message is any message, flattened; which fields are used depends on Type
// (docs/protocol.md lists them). Byte slices refer into the decoded frame.
type Message struct {
	Type Type
	ID   uint32 // request ID, echoed by the reply

	Context    uint32 // OPEN UPDATE COPY FINALIZE VERIFY CLOSE
	NewContext uint32 // COPY
	Algorithm  uint8  // OPEN MAC VERIFY_MAC
	Key        []byte // key name: OPEN MAC VERIFY_MAC GENERATE_KEY IMPORT_KEY IMPORT_WRAPPED DELETE_KEY
	Provider   []byte // GENERATE_KEY IMPORT_KEY IMPORT_WRAPPED DELETE_KEY; empty: the default
	Wrapping   []byte // IMPORT_WRAPPED: the name of the key that unwraps
	Length     uint32 // GENERATE_KEY ROTATE_KEY: key length in bytes, 0 for the default
	KeyVersion uint32 // RETIRE_VERSION TAG_VERSION VERIFIED
	Flags      uint8  // ROTATE_KEY RETIRE_VERSION
	Tag        []byte // VERIFY VERIFY_MAC TAG TAG_VERSION
	Data       []byte // UPDATE MAC VERIFY_MAC, IMPORT_KEY ROTATE_KEY (secret), DATA (JSON), ERROR (text)
	Code       Code   // ERROR

	MinVersion, MaxVersion uint16 // HELLO
	Version                uint16 // HELLO_REPLY
	MaxFrame               uint32 // HELLO_REPLY
	MaxContexts            uint32 // HELLO_REPLY
	MaxInFlight            uint32 // HELLO_REPLY
}

// Decoding errors. ErrUnknownType still fills in Type and ID, so that the
// reply can name the request.
var (
	ErrMalformed   = errors.New("malformed message")
	ErrUnknownType = errors.New("unknown message type")
)

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) need(n int) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) < n {
		d.err = ErrMalformed
		return false
	}
	return true
}

func (d *decoder) u8() uint8 {
	if !d.need(1) {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) u16() uint16 {
	if !d.need(2) {
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *decoder) u32() uint32 {
	if !d.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

// short reads a byte string prefixed by a one-byte length.
func (d *decoder) short() []byte {
	n := int(d.u8())
	if !d.need(n) {
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// rest takes the remaining bytes.
func (d *decoder) rest() []byte {
	v := d.b[:len(d.b):len(d.b)]
	d.b = nil
	return v
}

// end fails if bytes are left over: a message has one encoding.
func (d *decoder) end() {
	if d.err == nil && len(d.b) != 0 {
		d.err = ErrMalformed
	}
}

// Decode parses a frame body (type, request ID, payload) into m. Slices in
// m refer into body.
func Decode(body []byte, m *Message) error {
	*m = Message{}
	if len(body) < 5 {
		return fmt.Errorf("%w: body of %d bytes is shorter than its header", ErrMalformed, len(body))
	}
	m.Type = Type(body[0])
	m.ID = binary.BigEndian.Uint32(body[1:5])
	d := decoder{b: body[5:]}
	switch m.Type {
	case TypeHello:
		if d.need(4) && string(d.b[:4]) != Magic {
			return fmt.Errorf("%w: HELLO without the magic %q", ErrMalformed, Magic)
		}
		d.b = d.b[min(4, len(d.b)):]
		m.MinVersion, m.MaxVersion = d.u16(), d.u16()
		d.end()
	case TypeOpen:
		m.Context, m.Algorithm, m.Key = d.u32(), d.u8(), d.short()
		d.end()
	case TypeUpdate:
		m.Context, m.Data = d.u32(), d.rest()
	case TypeCopy:
		m.Context, m.NewContext = d.u32(), d.u32()
		d.end()
	case TypeFinalize, TypeClose:
		m.Context = d.u32()
		d.end()
	case TypeVerify:
		m.Context, m.Tag = d.u32(), d.rest()
	case TypeMAC:
		m.Algorithm, m.Key, m.Data = d.u8(), d.short(), d.rest()
	case TypeVerifyMAC:
		m.Algorithm, m.Key, m.Tag, m.Data = d.u8(), d.short(), d.short(), d.rest()
	case TypeListKeys, TypeStatus, TypeOK:
		d.end()
	case TypeGenerateKey:
		m.Provider, m.Key, m.Length = d.short(), d.short(), d.u32()
		d.end()
	case TypeImportKey:
		m.Provider, m.Key, m.Data = d.short(), d.short(), d.rest()
	case TypeImportWrapped:
		m.Provider, m.Key, m.Wrapping, m.Data = d.short(), d.short(), d.short(), d.rest()
	case TypeDeleteKey:
		m.Provider, m.Key = d.short(), d.short()
		d.end()
	case TypeRotateKey:
		m.Provider, m.Key, m.Length, m.Flags, m.Data = d.short(), d.short(), d.u32(), d.u8(), d.rest()
	case TypeRetireVersion:
		m.Provider, m.Key, m.KeyVersion, m.Flags = d.short(), d.short(), d.u32(), d.u8()
		d.end()
	case TypeTagVersion:
		m.KeyVersion, m.Tag = d.u32(), d.rest()
	case TypeVerified:
		m.KeyVersion = d.u32()
		d.end()
	case TypeHelloReply:
		m.Version, m.MaxFrame, m.MaxContexts, m.MaxInFlight = d.u16(), d.u32(), d.u32(), d.u32()
		d.end()
	case TypeTag:
		m.Tag = d.rest()
	case TypeData:
		m.Data = d.rest()
	case TypeError:
		m.Code, m.Data = Code(d.u16()), d.rest()
	default:
		return fmt.Errorf("%w 0x%02x", ErrUnknownType, uint8(m.Type))
	}
	if d.err != nil {
		return fmt.Errorf("%w: %s of %d bytes", d.err, m.Type, len(body))
	}
	return nil
}

// Append appends m as a whole frame, length prefix included. It fails only
// if a length-prefixed field is too long for its prefix or the type is
// unknown.
func (m *Message) Append(b []byte) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, 0, 0, byte(m.Type))
	b = binary.BigEndian.AppendUint32(b, m.ID)
	var err error
	short := func(v []byte) {
		if len(v) > 255 {
			err = fmt.Errorf("wire: %s: field of %d bytes exceeds 255", m.Type, len(v))
		}
		b = append(b, byte(len(v)))
		b = append(b, v...)
	}
	switch m.Type {
	case TypeHello:
		b = append(b, Magic...)
		b = binary.BigEndian.AppendUint16(b, m.MinVersion)
		b = binary.BigEndian.AppendUint16(b, m.MaxVersion)
	case TypeOpen:
		b = binary.BigEndian.AppendUint32(b, m.Context)
		b = append(b, m.Algorithm)
		short(m.Key)
	case TypeUpdate:
		b = binary.BigEndian.AppendUint32(b, m.Context)
		b = append(b, m.Data...)
	case TypeCopy:
		b = binary.BigEndian.AppendUint32(b, m.Context)
		b = binary.BigEndian.AppendUint32(b, m.NewContext)
	case TypeFinalize, TypeClose:
		b = binary.BigEndian.AppendUint32(b, m.Context)
	case TypeVerify:
		b = binary.BigEndian.AppendUint32(b, m.Context)
		b = append(b, m.Tag...)
	case TypeMAC:
		b = append(b, m.Algorithm)
		short(m.Key)
		b = append(b, m.Data...)
	case TypeVerifyMAC:
		b = append(b, m.Algorithm)
		short(m.Key)
		short(m.Tag)
		b = append(b, m.Data...)
	case TypeListKeys, TypeStatus, TypeOK:
	case TypeGenerateKey:
		short(m.Provider)
		short(m.Key)
		b = binary.BigEndian.AppendUint32(b, m.Length)
	case TypeImportKey:
		short(m.Provider)
		short(m.Key)
		b = append(b, m.Data...)
	case TypeImportWrapped:
		short(m.Provider)
		short(m.Key)
		short(m.Wrapping)
		b = append(b, m.Data...)
	case TypeDeleteKey:
		short(m.Provider)
		short(m.Key)
	case TypeRotateKey:
		short(m.Provider)
		short(m.Key)
		b = binary.BigEndian.AppendUint32(b, m.Length)
		b = append(b, m.Flags)
		b = append(b, m.Data...)
	case TypeRetireVersion:
		short(m.Provider)
		short(m.Key)
		b = binary.BigEndian.AppendUint32(b, m.KeyVersion)
		b = append(b, m.Flags)
	case TypeTagVersion:
		b = binary.BigEndian.AppendUint32(b, m.KeyVersion)
		b = append(b, m.Tag...)
	case TypeVerified:
		b = binary.BigEndian.AppendUint32(b, m.KeyVersion)
	case TypeHelloReply:
		b = binary.BigEndian.AppendUint16(b, m.Version)
		b = binary.BigEndian.AppendUint32(b, m.MaxFrame)
		b = binary.BigEndian.AppendUint32(b, m.MaxContexts)
		b = binary.BigEndian.AppendUint32(b, m.MaxInFlight)
	case TypeTag:
		b = append(b, m.Tag...)
	case TypeData:
		b = append(b, m.Data...)
	case TypeError:
		b = binary.BigEndian.AppendUint16(b, uint16(m.Code))
		b = append(b, m.Data...)
	default:
		return b[:start], fmt.Errorf("wire: cannot encode %s", m.Type)
	}
	if err != nil {
		return b[:start], err
	}
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-4))
	return b, nil
}

// AppendHeader appends a frame's length, type and request ID for a body
// whose payload of payloadLen bytes the caller writes next. The hot paths
// (UPDATE, TAG) use it to avoid copying data into a message first.
func AppendHeader(b []byte, t Type, id uint32, payloadLen int) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(5+payloadLen))
	b = append(b, byte(t))
	return binary.BigEndian.AppendUint32(b, id)
}
