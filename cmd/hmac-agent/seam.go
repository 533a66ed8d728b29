package main

import (
	"github.com/hmac-agent/hmac-agent/agent"
	"github.com/hmac-agent/hmac-agent/socket"
)

// The socket serves the agent through interfaces of its own; these say
// at compile time that the agent is what it serves.
var (
	_ socket.Agent[*agent.Session] = (*agent.Agent)(nil)
	_ socket.Session               = (*agent.Session)(nil)
)
