package main

import (
	"fmt"
	"syscall"
)

// raiseNoFileLimit raises the soft limit on open files to the hard limit:
// every vdisk, NBD client and API connection takes descriptors, and the
// default soft limit (often 1024) is far below what a host serves.
func raiseNoFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("setrlimit: %w", err)
		}
	}
	return rl.Cur, nil
}
