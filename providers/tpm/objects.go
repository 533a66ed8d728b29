package tpm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/hmac-agent/hmac-agent/providers"
)

type objKind int

const (
	objSRK objKind = iota
	objKey
	objSeq
)

// object is something that must be loaded in the TPM to be used: the
// storage key, a key, or an HMAC sequence. Loaded, it has a handle; swapped
// out, a saved context. A key can also always be loaded from its blob. All
// fields are guarded by the provider's mu.
type object struct {
	kind    objKind
	handle  tpm2.TPMHandle // 0 when not loaded
	name    tpm2.TPM2BName
	saved   *tpm2.TPMSContext
	epoch   uint64 // the connection the handle or saved context belongs to
	lastUse uint64
	blob    *blob  // keys: public and private areas and auth value
	label   string // for errors: the key's name and algorithm
}

// ErrTPMCleared wraps Load failures with TPM_RC_INTEGRITY: the TPM's
// storage hierarchy changed (TPM2_Clear) or the blob is another TPM's.
var ErrTPMCleared = errors.New("the TPM cannot load the key's blob: it was cleared, or the blob belongs to another TPM")

// loadLocked makes the objects loaded, swapping others out as needed.
// None of them is swapped out to make room for another.
func (p *Provider) loadLocked(pins ...*object) error {
	for _, o := range pins {
		if err := p.ensureLocked(o, pins); err != nil {
			return err
		}
	}
	return nil
}

// fresh resets an object of an older connection: its handle and saved
// context are gone with the TPM that had them. A sequence cannot be made
// again.
func (p *Provider) fresh(o *object) error {
	if o.epoch == p.epoch {
		return nil
	}
	if o.kind == objSeq {
		return fmt.Errorf("tpm: %w: the TPM restarted and the sequence's state is gone", providers.ErrContextLost)
	}
	o.handle, o.saved, o.epoch = 0, nil, p.epoch
	return nil
}

// ensureLocked loads o, never swapping out one of pins.
func (p *Provider) ensureLocked(o *object, pins []*object) error {
	if err := p.fresh(o); err != nil {
		return err
	}
	p.clock++
	o.lastUse = p.clock
	if o.handle != 0 {
		return nil
	}
	protect := append(slices.Clip(pins), o)
	if o.saved != nil {
		err := p.withRoomLocked(o, protect, func() error {
			rsp, err := tpm2.ContextLoad{Context: *o.saved}.Execute(p.t)
			if err == nil {
				o.handle = rsp.LoadedHandle
			}
			return err
		})
		if err == nil {
			o.saved = nil
			return nil
		}
		if o.kind == objSeq || errors.Is(err, errTransport) {
			return p.wrapLoad(o, err)
		}
		o.saved = nil // a key or the storage key can be made again
	}
	switch o.kind {
	case objSRK:
		return p.withRoomLocked(o, protect, func() error {
			rsp, err := tpm2.CreatePrimary{
				PrimaryHandle: tpm2.TPMRHOwner,
				InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
			}.Execute(p.t)
			if err != nil {
				return fmt.Errorf("tpm: derive the storage key: %w", err)
			}
			pub, err := rsp.OutPublic.Contents()
			if err != nil {
				return err
			}
			o.handle, o.name, p.srkPub = rsp.ObjectHandle, rsp.Name, pub
			return nil
		})
	case objKey:
		if err := p.ensureLocked(p.srk, protect); err != nil {
			return err
		}
		return p.withRoomLocked(o, append(protect, p.srk), func() error {
			rsp, err := tpm2.Load{
				ParentHandle: tpm2.AuthHandle{Handle: p.srk.handle, Name: p.srk.name, Auth: tpm2.PasswordAuth(nil)},
				InPrivate:    tpm2.TPM2BPrivate{Buffer: o.blob.Private},
				InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](o.blob.Public),
			}.Execute(p.t)
			if err != nil {
				return p.wrapLoad(o, err)
			}
			o.handle, o.name = rsp.ObjectHandle, rsp.Name
			return nil
		})
	}
	return fmt.Errorf("tpm: %w: the sequence's state is gone", providers.ErrContextLost)
}

// withRoomLocked frees a slot, never one of protect's, and runs load,
// which puts o in it.
func (p *Provider) withRoomLocked(o *object, protect []*object, load func() error) error {
	if err := p.roomLocked(protect, load); err != nil {
		return err
	}
	p.loaded = append(p.loaded, o)
	return nil
}

// roomLocked frees a slot, never one of protect's, and runs cmd, which
// needs it: to load an object, or for a while (TPM2_Create and
// TPM2_Import build the new object in a slot). If the TPM has fewer slots
// than thought (another user holds some), it believes the TPM and tries
// again.
func (p *Provider) roomLocked(protect []*object, cmd func() error) error {
	for attempt := 0; ; attempt++ {
		if err := p.makeRoomLocked(protect); err != nil {
			return err
		}
		err := cmd()
		if errors.Is(err, tpm2.TPMRCObjectMemory) && attempt < 3 && len(p.loaded) > 0 {
			p.slots = max(len(p.loaded), 2)
			continue
		}
		return err
	}
}

func (p *Provider) wrapLoad(o *object, err error) error {
	switch {
	case errors.Is(err, tpm2.TPMRCIntegrity):
		return fmt.Errorf("tpm: key %s: %w: %w (%w)", o.label, p.refused("the TPM cannot load the key: it was cleared"), ErrTPMCleared, err)
	case errors.Is(err, errTransport):
		return err
	case o.kind == objSeq:
		return fmt.Errorf("tpm: %w: cannot load the sequence: %w", providers.ErrContextLost, err)
	}
	return fmt.Errorf("tpm: load key %s: %w: %w", o.label, p.refused("the TPM cannot load the key"), err)
}

// makeRoomLocked swaps out least recently used objects until a slot is
// free, never one of pins.
func (p *Provider) makeRoomLocked(pins []*object) error {
	for len(p.loaded) >= p.slots {
		victim := -1
		for i, o := range p.loaded {
			if slices.Contains(pins, o) {
				continue
			}
			if victim < 0 || o.lastUse < p.loaded[victim].lastUse {
				victim = i
			}
		}
		if victim < 0 {
			return fmt.Errorf("tpm: %w", p.refused(fmt.Sprintf("a command needs more objects than the TPM's %d slots", p.slots)))
		}
		if err := p.swapOutLocked(p.loaded[victim]); err != nil {
			return err
		}
	}
	return nil
}

// swapOutLocked saves o's context and flushes it.
func (p *Provider) swapOutLocked(o *object) error {
	rsp, err := tpm2.ContextSave{SaveHandle: o.handle}.Execute(p.t)
	if err != nil {
		return fmt.Errorf("tpm: save context: %w", err)
	}
	if _, err := (tpm2.FlushContext{FlushHandle: o.handle}).Execute(p.t); err != nil {
		return fmt.Errorf("tpm: flush: %w", err)
	}
	o.saved = &rsp.Context
	p.dropLocked(o)
	p.swaps.Add(1)
	return nil
}

// dropLocked forgets that o is loaded (it was flushed, or consumed by
// TPM2_SequenceComplete).
func (p *Provider) dropLocked(o *object) {
	o.handle = 0
	p.loaded = slices.DeleteFunc(p.loaded, func(x *object) bool { return x == o })
}

// releaseLocked flushes o if loaded and forgets any saved context.
func (p *Provider) releaseLocked(o *object) {
	if o.handle != 0 && o.epoch == p.epoch && p.t != nil {
		tpm2.FlushContext{FlushHandle: o.handle}.Execute(p.t)
	}
	p.dropLocked(o)
	o.saved = nil
}
