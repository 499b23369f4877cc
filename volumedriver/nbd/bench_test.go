package nbd

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// ramDevice is a flat in-memory Device test double for benchmarks, with
// striped locks so that concurrent requests scale.
type ramDevice struct {
	data  []byte
	locks [256]sync.RWMutex
}

const ramStripe = 64 << 10

func newRAMDevice(size int64) *ramDevice {
	d := &ramDevice{data: make([]byte, size)}
	for i := 0; i < len(d.data); i += 4096 {
		d.data[i] = 1 // fault the pages in now rather than during the run
	}
	return d
}

func (d *ramDevice) lockRange(off, n int64, write bool) func() {
	first, last := off/ramStripe, (off+max(n, 1)-1)/ramStripe
	if last-first >= int64(len(d.locks)) {
		first, last = 0, int64(len(d.locks)-1)
	}
	idx := make([]int, 0, 2)
	for s := first; s <= last; s++ {
		idx = append(idx, int(s%int64(len(d.locks))))
	}
	// Lock in index order to avoid deadlocks on wrap-around.
	for i := 1; i < len(idx); i++ {
		for j := i; j > 0 && idx[j] < idx[j-1]; j-- {
			idx[j], idx[j-1] = idx[j-1], idx[j]
		}
	}
	for k, i := range idx {
		if k > 0 && idx[k-1] == i {
			continue
		}
		if write {
			d.locks[i].Lock()
		} else {
			d.locks[i].RLock()
		}
	}
	return func() {
		for k, i := range idx {
			if k > 0 && idx[k-1] == i {
				continue
			}
			if write {
				d.locks[i].Unlock()
			} else {
				d.locks[i].RUnlock()
			}
		}
	}
}

func (d *ramDevice) Size() int64 { return int64(len(d.data)) }

func (d *ramDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	defer d.lockRange(off, int64(len(p)), false)()
	copy(p, d.data[off:])
	return nil
}

func (d *ramDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	defer d.lockRange(off, int64(len(p)), true)()
	copy(d.data[off:], p)
	return nil
}

func (d *ramDevice) Flush(ctx context.Context) error { return nil }

func (d *ramDevice) Trim(ctx context.Context, off, length int64) error {
	return d.WriteZeroes(ctx, off, length, false, false)
}

func (d *ramDevice) WriteZeroes(ctx context.Context, off, length int64, noHole, fua bool) error {
	defer d.lockRange(off, length, true)()
	clear(d.data[off : off+length])
	return nil
}

func (d *ramDevice) BlockStatus(ctx context.Context, off, length int64) ([]Extent, error) {
	return []Extent{{Length: length}}, nil
}

type ramExports struct{ dev *ramDevice }

func (e ramExports) OpenExport(ctx context.Context, name string) (Device, func(), error) {
	return e.dev, func() {}, nil
}

func (e ramExports) ListExports(ctx context.Context) ([]string, error) {
	return []string{"ram"}, nil
}

// benchmarkQD runs b.N requests of 4 KiB with qd in flight on one
// connection, using the test client.
func benchmarkQD(b *testing.B, typ uint16, qd int) {
	sock := filepath.Join(b.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	srv := NewServer(ramExports{newRAMDevice(64 << 20)}, Options{})
	go srv.Serve(context.Background(), l)
	defer srv.Close()
	c := dialClient(b, sock)
	c.nc.SetDeadline(time.Time{})
	c.connect("ram", true, false)
	payload := make([]byte, 4096)
	var p []byte
	if typ == cmdWrite {
		p = payload
	}
	b.SetBytes(4096)
	b.ResetTimer()
	sent, got := 0, 0
	for got < b.N {
		for sent < b.N && sent-got < qd {
			c.send(typ, 0, uint64(sent), uint64(sent%16384)*4096, 4096, p)
			sent++
		}
		if r := c.recv(); r.errno != 0 {
			b.Fatal(r)
		}
		got++
	}
}

func BenchmarkRead4KQD32(b *testing.B)  { benchmarkQD(b, cmdRead, 32) }
func BenchmarkWrite4KQD32(b *testing.B) { benchmarkQD(b, cmdWrite, 32) }

// TestFioBenchmark compares the server with "nbdkit memory" under fio's
// nbd engine, 4 KiB random I/O at QD32. It asserts nothing and runs only
// with OVS_NBD_BENCH=1:
//
//	OVS_NBD_BENCH=1 go test -run TestFioBenchmark -v ./volumedriver/nbd/
func TestFioBenchmark(t *testing.T) {
	if os.Getenv("OVS_NBD_BENCH") != "1" {
		t.Skip("set OVS_NBD_BENCH=1 to run")
	}
	needTool(t, "fio")
	needTool(t, "nbdkit")
	const size = 512 << 20
	runtime := "10"
	if r := os.Getenv("OVS_NBD_BENCH_SECONDS"); r != "" {
		runtime = r
	}
	fio := func(uri, rw string) float64 {
		out := runTool(t, "fio", "--name=bench", "--ioengine=nbd", "--uri="+uri, "--rw="+rw,
			"--bs=4k", "--iodepth=32", "--size="+fmt.Sprint(size), "--time_based", "--runtime="+runtime,
			"--ramp_time=1", "--output-format=json")
		var f struct {
			Jobs []struct {
				Read  struct{ IOPS float64 } `json:"read"`
				Write struct{ IOPS float64 } `json:"write"`
			} `json:"jobs"`
		}
		if i := strings.Index(out, "{"); i >= 0 {
			out = out[i:]
		}
		if err := json.NewDecoder(strings.NewReader(out)).Decode(&f); err != nil || len(f.Jobs) != 1 {
			t.Fatalf("fio: %v\n%s", err, out)
		}
		return f.Jobs[0].Read.IOPS + f.Jobs[0].Write.IOPS
	}

	dir := t.TempDir()
	sock := filepath.Join(dir, "ovs.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ramExports{newRAMDevice(size)}, Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	go srv.Serve(context.Background(), l)
	defer srv.Close()

	ksock := filepath.Join(dir, "nbdkit.sock")
	kit := exec.Command("nbdkit", "-f", "-U", ksock, "memory", fmt.Sprint(size))
	kit.Stderr = os.Stderr
	if err := kit.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		kit.Process.Kill()
		kit.Wait()
	}()
	waitFor(t, func() bool { _, err := os.Stat(ksock); return err == nil })

	for _, rw := range []string{"randwrite", "randread"} {
		ours := fio("nbd+unix:///ram?socket="+sock, rw)
		theirs := fio("nbd+unix:///?socket="+ksock, rw)
		t.Logf("4k %s QD32: ovs nbd %.0f IOPS, nbdkit memory %.0f IOPS (%.2fx)", rw, ours, theirs, ours/theirs)
	}
}
