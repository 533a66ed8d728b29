// Package wire is the hmac-agent protocol's codec: frames, messages and the
// table of error codes. docs/protocol.md is its specification; the two
// change together.
//
// Decoding never allocates: a decoded [Message] refers into the frame it
// came from and is valid until the next frame is read. Encoding appends to a
// caller's buffer.
//
// Nothing in this package is safe for concurrent use except the pure
// functions.
package wire
