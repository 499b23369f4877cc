package tests

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// ovsBin is the absolute path of the ovs binary under test.
var ovsBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() || flagSet("test.list") {
		// Every test here skips itself in -short mode, and listing
		// runs none: don't build.
		os.Exit(m.Run())
	}
	cleanup, err := findOrBuildOVS()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tests: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// findOrBuildOVS sets ovsBin from $OVS_BIN, or builds ./cmd/ovs once into a
// temporary directory that the returned function removes.
func findOrBuildOVS() (func(), error) {
	if bin := os.Getenv("OVS_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("OVS_BIN: %w", err)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("OVS_BIN=%s is not an executable file", bin)
		}
		ovsBin = abs
		return func() {}, nil
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir, err := os.MkdirTemp("", "ovs-e2e-bin-")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "ovs")
	cmd := exec.Command(goTool, "build", "-o", bin, "github.com/ovs-storage/ovs/cmd/ovs")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("building cmd/ovs: %v\n%s", err, out)
	}
	ovsBin = bin
	return func() { os.RemoveAll(dir) }, nil
}

func flagSet(name string) bool {
	f := flag.Lookup(name)
	return f != nil && f.Value.String() != ""
}
