//go:build !unix

package config

import "os"

// checkTrusted has no owners and modes to check here.
func checkTrusted(*os.File, string) error { return nil }
