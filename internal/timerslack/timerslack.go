// Package timerslack sets the Linux timer slack the OVS daemons run with.
//
// Why: the Go runtime's monitor thread (sysmon) sleeps 20 µs at a time
// while any thread is in a blocking system call, and the daemons spend
// much of their time in fsync, file writes and file creation: on `ovs up`'s
// 1 MiB sequential writes that polling was 14% of each ASD's CPU and 4%
// of the node's (perf), each wake-up a context switch, which a VM makes
// dear. With 1 ms of slack the kernel lets those sleeps run long and
// coalesces them. Nothing in the daemons waits on a timer finer than a
// millisecond (deadlines, hedges and raft timers are milliseconds or
// more); measured on `ovs up`: 1 MiB sequential writes ~147 -> ~185 MiB/s,
// 4 KiB random writes at QD1 9.4k -> 12.3k IOPS (p50 63 -> 42 µs).
//
// A thread inherits its creator's slack, and the runtime makes its
// monitor thread before any code of the program runs, so a process gets
// the slack from the thread that starts it (Start), from systemd
// (TimerSlackNSec), or by executing itself again (Ensure).
package timerslack

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// Daemon is the slack the OVS daemons run with.
const Daemon = time.Millisecond

// Linux prctl options (linux/prctl.h).
const (
	prSetTimerSlack = 29
	prGetTimerSlack = 30
)

// reexecEnv marks a process that Ensure executed again, so that it never
// loops when the slack does not hold.
const reexecEnv = "OVS_TIMERSLACK_REEXEC"

// get returns the calling thread's slack.
func get() (time.Duration, error) {
	v, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prGetTimerSlack, 0, 0)
	if errno != 0 {
		return 0, fmt.Errorf("prctl(PR_GET_TIMERSLACK): %w", errno)
	}
	return time.Duration(v), nil
}

// set sets the calling thread's slack.
func set(d time.Duration) error {
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, uintptr(d.Nanoseconds()), 0); errno != 0 {
		return fmt.Errorf("prctl(PR_SET_TIMERSLACK, %v): %w", d, errno)
	}
	return nil
}

// Start starts cmd from a thread whose slack is d for the while, so that
// the process runs with it. The slack is a hint: when it cannot be set,
// cmd starts as it would have.
func Start(cmd *exec.Cmd, d time.Duration) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	old, err := get()
	if err != nil || set(d) != nil {
		return cmd.Start()
	}
	err = cmd.Start()
	_ = set(old)
	return err
}

// Ensure makes the running program run with at least d of slack: if the
// calling thread has less, it sets it and executes the program again,
// with the same arguments and environment, in the same process (execve
// keeps the pid and the slack). It returns only if nothing was to be done
// or the execution failed (the program then goes on as it is; the error
// says why). Call it first thing in main, before any state exists that an
// execution would lose.
func Ensure(d time.Duration) error {
	if os.Getenv(reexecEnv) != "" {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := get()
	if err != nil || cur >= d {
		return err
	}
	if err := set(d); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("timer slack: %w", err)
	}
	env := append(os.Environ(), reexecEnv+"=1")
	return fmt.Errorf("timer slack: execute %s again: %w", exe, syscall.Exec(exe, os.Args, env))
}
