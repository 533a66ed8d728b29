package socket

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/hmac-agent/hmac-agent/internal/threadprio"
	"github.com/hmac-agent/hmac-agent/socket/wire"
)

// replyWriter is what a connection's replies are flushed to, with wmu
// held: the one place a reply waits for the peer to read.
//
// A reader running in the background (see background) is locked to its
// thread, and a locked goroutine that waits keeps its thread idle: a
// crowd of callers that send requests and never read the replies held a
// thread each, which the Go runtime keeps for good once made. So the
// reader, found by its thread, comes back to the foreground before it
// writes.
//
// A peer that takes no reply for ReplyTimeout loses its connection. The
// deadline is moved only once half of it has passed, not at every write,
// so a write that waits is cut after between half of ReplyTimeout and
// all of it.
type replyWriter struct{ c *conn }

func (w replyWriter) Write(p []byte) (int, error) {
	c := w.c
	c.foregroundIfReader()
	if d := c.srv.limits.ReplyTimeout; d > 0 {
		if now := time.Now(); c.wdeadline.Sub(now) < d/2 {
			c.wdeadline = now.Add(d)
			c.nc.SetWriteDeadline(c.wdeadline)
		}
	}
	n, err := c.nc.Write(p)
	if err != nil {
		// The stream is cut mid-reply, or the peer is gone: stop
		// reading it too, so the reader lets go of what it holds.
		c.nc.Close()
	}
	return n, err
}

// foregroundIfReader brings the reader back to the normal priority if
// it is the caller and runs in the background: before it may wait to
// write, or for another goroutine that is writing (lockWrites). Only the
// reader runs on the thread it recorded, which is locked to it.
func (c *conn) foregroundIfReader() {
	if t := c.lowTid.Load(); t != 0 && int(t) == threadprio.Thread() {
		c.foreground()
	}
}

// lockWrites takes wmu. Its holder may be waiting for the peer to take a
// reply (see replyWriter): a reader in the background that would wait
// for it comes back to the foreground first.
func (c *conn) lockWrites() {
	if c.wmu.TryLock() {
		return
	}
	c.foregroundIfReader()
	c.wmu.Lock()
}

// reply queues a message; it is sent at the next flush.
func (c *conn) reply(m *wire.Message) {
	c.lockWrites()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	b, err := m.Append(c.bw.AvailableBuffer())
	if err != nil {
		c.srv.log.Error("cannot encode reply", "type", m.Type, "err", err)
		return
	}
	_, c.werr = c.bw.Write(b)
}

func (c *conn) replyResult(id uint32, err error) {
	if err != nil {
		c.replyError(id, err)
		return
	}
	c.reply(&wire.Message{Type: wire.TypeOK, ID: id})
}

// replyTag sends a TAG, or to a client of protocol version 2 a
// TAG_VERSION, without building a Message: it is the hot path.
func (c *conn) replyTag(id uint32, tag []byte, version int, err error) {
	if err != nil {
		c.replyError(id, err)
		return
	}
	c.lockWrites()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	var b []byte
	if c.proto >= wire.VersionKeyVersions {
		b = wire.AppendHeader(c.bw.AvailableBuffer(), wire.TypeTagVersion, id, 4+len(tag))
		b = binary.BigEndian.AppendUint32(b, uint32(version))
	} else {
		b = wire.AppendHeader(c.bw.AvailableBuffer(), wire.TypeTag, id, len(tag))
	}
	_, c.werr = c.bw.Write(append(b, tag...))
}

// replyVerified answers a verification that succeeded with VERIFIED,
// naming the version the tag matched, or OK to a client of protocol
// version 1.
func (c *conn) replyVerified(id uint32, version int, err error) {
	if err != nil || c.proto < wire.VersionKeyVersions {
		c.replyResult(id, err)
		return
	}
	c.reply(&wire.Message{Type: wire.TypeVerified, ID: id, KeyVersion: uint32(version)})
}

// replyError sends the code and the public message of err. Errors with no
// code of their own are logged here, since the client learns only that
// the agent failed.
func (c *conn) replyError(id uint32, err error) { c.reply(c.errorMessage(id, err)) }

// errorMessage is the ERROR replyError sends.
func (c *conn) errorMessage(id uint32, err error) *wire.Message {
	code := wire.CodeOf(err)
	if code == wire.CodeInternal && !errors.Is(err, wire.ErrInternal) {
		c.srv.log.Error("request failed", "id", id, "err", err)
	}
	return &wire.Message{Type: wire.TypeError, ID: id, Code: code, Data: []byte(wire.PublicMessage(err))}
}

func (c *conn) flush() error {
	c.lockWrites()
	defer c.wmu.Unlock()
	if c.werr == nil {
		c.werr = c.bw.Flush()
	}
	return c.werr
}
