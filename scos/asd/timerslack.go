package asd

import (
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// asdTimerSlack is the timer slack ASD processes run with.
//
// Why: the Go runtime's monitor thread (sysmon) polls every 20 µs while
// any thread is in a blocking system call, and an ASD is in fsync, file
// writes and file creation most of the time it works: on `ovs up`'s
// 1 MiB sequential writes that polling was 14% of each ASD's CPU (perf),
// each poll a context switch, which a VM makes dear. With 1 ms of slack
// the kernel lets those sleeps run long (and coalesces them); nothing in
// an ASD waits on a timer finer than a millisecond (deadlines are
// seconds). The systemd unit sets the same (TimerSlackNSec).
const asdTimerSlack = time.Millisecond

// Linux prctl options (linux/prctl.h).
const (
	prSetTimerSlack = 29
	prGetTimerSlack = 30
)

// startWithTimerSlack starts cmd from a thread whose timer slack is slack
// for the while: a child inherits its parent thread's slack, and so do
// all the threads it makes (the runtime's monitor thread is made before
// any code of the child could set it). The slack is a hint: when it
// cannot be set, cmd starts as it would have.
func startWithTimerSlack(cmd *exec.Cmd, slack time.Duration) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	old, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prGetTimerSlack, 0, 0)
	if errno != 0 {
		return cmd.Start()
	}
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, uintptr(slack.Nanoseconds()), 0); errno != 0 {
		return cmd.Start()
	}
	err := cmd.Start()
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, old, 0)
	return err
}
