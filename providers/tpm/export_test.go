package tpm

// MaxReplay is the input a context keeps to replay after a restart.
const MaxReplay = maxReplay
