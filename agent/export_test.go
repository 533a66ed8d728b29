package agent

// MaxStuck is maxStuck, for tests.
const MaxStuck = maxStuck
