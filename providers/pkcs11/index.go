//go:build cgo

package pkcs11

import (
	p11 "github.com/miekg/pkcs11"
)

// SoftHSM2 (2.6.1, and its main branch as of this writing) keeps, per
// process, an index of each token's object files, and C_FindObjectsInit
// rebuilds it from a listing of the token's directory whenever an object
// was created or destroyed since. It reads the directory and compares the
// listing with its list of known files without its lock, while
// C_CreateObject, C_GenerateKey and C_UnwrapKey add the new file to that
// list under the lock. A search that listed the directory just before a
// key's file appeared therefore takes the new file for one removed and
// drops the object from the index: a key just imported is then not found
// by the lookup that follows, or by any search until the index is rebuilt
// again; dropped while the create call still writes the key's
// attributes, the create itself fails with CKR_TEMPLATE_INCONSISTENT. Two
// searches rebuilding at once can also index one file twice. The
// agent searches from many goroutines (lookups, the version refresh,
// listings), so this happened under load.
//
// So every C_FindObjectsInit and every call that creates a token object
// holds indexMu, one lock for every provider on the module (two providers
// may name the same token). Searches are rare next to MACs, which use
// handles found before; creating is rarer still. C_FindObjects and
// C_FindObjectsFinal only walk results already found and run unlocked.

// findObjects returns up to max handles of the token objects tmpl matches.
func (p *Provider) findObjects(s *session, tmpl []*p11.Attribute, max int) ([]p11.ObjectHandle, error) {
	p.mod.indexMu.Lock()
	err := p.ctx.FindObjectsInit(s.h, tmpl)
	p.mod.indexMu.Unlock()
	if err != nil {
		return nil, err
	}
	hs, _, err := p.ctx.FindObjects(s.h, max)
	if ferr := p.ctx.FindObjectsFinal(s.h); err == nil {
		err = ferr
	}
	return hs, err
}

// createObject is C_CreateObject, ordered against searches.
func (p *Provider) createObject(s *session, tmpl []*p11.Attribute) (p11.ObjectHandle, error) {
	p.mod.indexMu.Lock()
	defer p.mod.indexMu.Unlock()
	return p.ctx.CreateObject(s.h, tmpl)
}

// generateKey is C_GenerateKey, ordered against searches.
func (p *Provider) generateKey(s *session, mech []*p11.Mechanism, tmpl []*p11.Attribute) (p11.ObjectHandle, error) {
	p.mod.indexMu.Lock()
	defer p.mod.indexMu.Unlock()
	return p.ctx.GenerateKey(s.h, mech, tmpl)
}

// unwrapKey is C_UnwrapKey, ordered against searches.
func (p *Provider) unwrapKey(s *session, mech []*p11.Mechanism, wrapping p11.ObjectHandle, wrapped []byte, tmpl []*p11.Attribute) (p11.ObjectHandle, error) {
	p.mod.indexMu.Lock()
	defer p.mod.indexMu.Unlock()
	return p.ctx.UnwrapKey(s.h, mech, wrapping, wrapped, tmpl)
}
