package socket

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
