//go:build !linux

package threadprio

import "errors"

// setNice fails: other systems keep one nice value for the process.
func setNice(int) error { return errors.ErrUnsupported }

// ThreadNice fails: see setNice.
func ThreadNice(int) (int, error) { return 0, errors.ErrUnsupported }

// Thread is 0 where threads are not told apart.
func Thread() int { return 0 }
