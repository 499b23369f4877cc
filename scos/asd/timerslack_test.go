package asd

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A process started with startWithTimerSlack runs with that slack; the
// starting thread gets its own back.
func TestStartWithTimerSlack(t *testing.T) {
	if _, err := os.Stat("/proc/self/timerslack_ns"); err != nil {
		t.Skipf("no timerslack_ns in /proc: %v", err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	own := func() string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", syscall.Gettid()))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	before := own()
	var out bytes.Buffer
	cmd := exec.Command("cat", "/proc/self/timerslack_ns")
	cmd.Stdout = &out
	if err := startWithTimerSlack(cmd, 3*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != "3000000" {
		t.Fatalf("the child's timer slack is %s ns, want 3000000", got)
	}
	if after := own(); after != before {
		t.Fatalf("the starting thread's slack went from %s to %s", before, after)
	}
}
