package timerslack

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

func threadSlack(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", syscall.Gettid()))
	if err != nil {
		t.Skipf("no timerslack_ns in /proc: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// A process started with Start runs with that slack; the starting thread
// gets its own back.
func TestStart(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := threadSlack(t)
	var out bytes.Buffer
	cmd := exec.Command("cat", "/proc/self/timerslack_ns")
	cmd.Stdout = &out
	if err := Start(cmd, 3*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != "3000000" {
		t.Fatalf("the child's timer slack is %s ns, want 3000000", got)
	}
	if after := threadSlack(t); after != before {
		t.Fatalf("the starting thread's slack went from %s to %s", before, after)
	}
}

// Ensure executes the program again with the slack: this test binary,
// run as a child in helper mode, reports the slack of every one of its
// threads after Ensure.
func TestEnsure(t *testing.T) {
	if os.Getenv("TIMERSLACK_HELPER") != "" {
		if err := Ensure(2 * time.Millisecond); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, task := range tasks {
			b, _ := os.ReadFile("/proc/" + task.Name() + "/timerslack_ns")
			fmt.Println(strings.TrimSpace(string(b)))
		}
		os.Exit(0)
	}
	threadSlack(t) // skips without /proc support
	cmd := exec.Command(os.Args[0], "-test.run=^TestEnsure$")
	cmd.Env = append(os.Environ(), "TIMERSLACK_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	lines := strings.Fields(string(out))
	if len(lines) == 0 {
		t.Fatalf("helper printed nothing")
	}
	for _, l := range lines {
		if l != "2000000" {
			t.Fatalf("a thread of the executed-again program has slack %s, want 2000000 (all: %v)", l, lines)
		}
	}
}
