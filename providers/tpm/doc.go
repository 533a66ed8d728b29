// Package tpm is the provider that keeps HMAC keys in a TPM 2.0 (swtpm in
// tests), built on github.com/google/go-tpm.
//
// # Keys
//
// A key is one keyedHash object per algorithm, because a TPM HMAC key is
// bound to the hash it was made for. Objects are created inside the TPM
// (generate), or made in software and brought in with TPM2_Import of a
// duplicate encrypted to the storage key, so the key's bytes never cross
// the bus in clear. Keys longer than the hash's block size are stored as
// their hash, and short ones zero-padded to the digest size; both leave
// every tag unchanged. Each object has a random auth value and is exempt
// from dictionary-attack lockout. The public and private blobs and the
// auth value are kept in files only the agent's user can read; the TPM
// holds nothing between uses but the storage key it derives again at
// start.
//
// # Slots
//
// A TPM has room for about three loaded objects. The storage key, keys and
// HMAC sequences are all virtual objects: when a command needs one that is
// not loaded, the least recently used unneeded one is saved
// (TPM2_ContextSave) and flushed, and saved ones are loaded back
// (TPM2_ContextLoad), so hundreds of contexts can be open at once. Copy
// saves a sequence's context and loads it as a new sequence.
//
// # The connection
//
// One persistent connection, owned by one lock, serves all requests in
// turn; each command is sent whole and its response read whole. TPM2_HMAC
// and TPM2_SequenceUpdate are marshalled by hand (go-tpm's reflection is
// too slow for data); everything else goes through go-tpm. When the TPM
// restarts underneath, the provider reconnects, derives the storage key
// again and reloads keys from their blobs. Sequences do not survive a
// restart: a context that kept its input (up to 64 KiB) replays it into a
// new sequence, and a longer one reports ErrContextLost. Every command is
// bounded by the configured timeout; one past it fails with
// ErrUnavailable and the connection is dropped, so its late reply is never
// read.
//
// # Keys on disk
//
// A key's blobs are written in a temporary directory renamed into place
// once whole, so a crash leaves a key whole or absent; leftovers are
// removed at start.
//
// # Versions
//
// [Provider] is a providers.Versioner (versions.go). Version 1 is the
// key's blobs as keys were always stored, so existing state directories
// load unchanged; version N is a directory vN beside them, built and
// renamed into place like a new key, so it too appears whole or not at
// all, and a second provider on the same directory cannot take a number
// already taken. Retirement and destruction are files created once
// (retired-N.json, destroyed-N.json), written before the blobs go.
//
// [Provider] and its keys are safe for concurrent use; a MAC context is
// not.
package tpm
