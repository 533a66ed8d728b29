// Package providers is the contract between the agent and the places keys
// live: a software keystore, a PKCS#11 token or a TPM.
//
// # The contract
//
// A [Provider] finds [Key]s by name. A Key opens [MAC] contexts, which follow
// pyca/cryptography's HMAC semantics: any number of Update calls, Copy, then
// exactly one Finalize or Verify, after which every method returns
// [ErrAlreadyFinalized].
//
// Powers a provider may lack (generating, importing and deleting keys) are
// separate interfaces, [Generator], [Importer] and [Deleter], found by type
// assertion.
//
// # Errors
//
// The sentinel errors in this package are the whole vocabulary the agent
// speaks to clients. Providers wrap them with %w and add their own detail for
// the log; callers compare with [errors.Is]. Nothing else crosses the socket.
//
// # Memory a caller makes a provider keep
//
// Input a context keeps (a buffer, a log to replay for Copy) is charged to
// the caller's [Budget], which the agent puts in the context.Context of
// every call ([WithBudget]) and a provider finds with [BudgetFrom] when a
// context opens. Past the budget a provider fails the Update with
// [ErrLimit] (or keeps less, where keeping is optional). A context that
// keeps input it was handed in a frame.Buffer ([Retainer]) keeps a
// reference to the buffer, not a copy, and charges its length all the
// same.
//
// # Concurrency
//
// Provider and Key values are safe for concurrent use. A MAC is not: it is
// used by one goroutine at a time, as a hash.Hash is.
package providers
