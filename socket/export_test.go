package socket

// FillTurns takes every turn at s's CPUs (its fair.Gate), sharing the
// gate as a second caller's connection would, so that a request that
// takes its turn waits for one. taken gives one turn up to a request
// waiting for it, if one waits, and reports whether it did: a turn given
// up with none waiting could be taken, used and given back by requests
// before it was taken again, unseen. release gives the rest up.
// Connections opened or closed meanwhile unshare the gate again: the test
// makes its own first.
func FillTurns(s *Server) (taken func() bool, release func()) {
	g := s.gate
	g.Share(true)
	var held []*int
	for {
		k := new(int)
		if !g.TryEnter(k) {
			break
		}
		held = append(held, k)
	}
	taken = func() bool {
		if len(held) == 0 || g.Waiting() == 0 {
			return false
		}
		// Leave hands the turn to the request waiting, under the gate's
		// lock.
		g.Leave(held[0])
		held = held[1:]
		return true
	}
	release = func() {
		for _, k := range held {
			g.Leave(k)
		}
		held = nil
	}
	return taken, release
}

// ContextQueues is how many context queues the server's connections
// hold: each is memory no budget counts, so one must go when its context
// has ended and nothing waits in it.
func (s *Server) ContextQueues() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		c.qmu.Lock()
		n += len(c.queues)
		c.qmu.Unlock()
	}
	return n
}

// Share makes s's CPU gate shared, as a second uid's connection would,
// until a connection opens or closes.
func Share(s *Server) { s.gate.Share(true) }
