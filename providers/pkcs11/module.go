//go:build cgo

package pkcs11

import (
	"fmt"
	"sync"

	p11 "github.com/miekg/pkcs11"
)

// A module may be initialized once per process, and finalizing it ends
// every session of every user, so providers on the same library share one
// context with a reference count.
var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

type module struct {
	ctx  *p11.Ctx
	path string
	refs int
}

func openModule(path string) (*module, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m := modules[path]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := p11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11: cannot load module %s", path)
	}
	if err := ctx.Initialize(); err != nil && rv(err) != p11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		ctx.Destroy()
		return nil, fmt.Errorf("pkcs11: initialize %s: %w", path, err)
	}
	m := &module{ctx: ctx, path: path, refs: 1}
	modules[path] = m
	return m, nil
}

// release drops a reference; the last one finalizes the module. The caller
// guarantees none of its calls is in flight.
func (m *module) release() {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules, m.path)
	m.ctx.Finalize()
	m.ctx.Destroy()
}
