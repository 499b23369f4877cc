package scsi

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
)

// cancelled is a context already done: a lock taken with it succeeds
// only if it is granted without waiting.
func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func heldLocks(l *extentLocks) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

// waitFor polls cond (another goroutine's progress) with a generous
// bound against hangs.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30 s for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestExtentLocks(t *testing.T) {
	var l extentLocks
	s1, err := l.lock(cancelled(), 0, 8, false)
	if err != nil {
		t.Fatal(err)
	}
	// Shared locks share; an exclusive one elsewhere does not wait.
	s2, err := l.lock(cancelled(), 4, 8, false)
	if err != nil {
		t.Fatalf("a second shared lock waited: %v", err)
	}
	s2()
	x, err := l.lock(cancelled(), 8, 8, true)
	if err != nil {
		t.Fatalf("an exclusive lock of other blocks waited: %v", err)
	}
	x()
	// An exclusive lock over a shared one waits; given up, it leaves
	// the queue.
	if _, err := l.lock(cancelled(), 7, 1, true); err == nil {
		t.Fatal("an exclusive lock over a shared one did not wait")
	}
	if n := heldLocks(&l); n != 1 {
		t.Fatalf("%d locks held after a waiter gave up, want 1", n)
	}
	// A waiting exclusive lock goes before a later shared one (no
	// starvation), and gets the blocks once the shared lock goes.
	got := make(chan func())
	go func() {
		unlock, err := l.lock(context.Background(), 0, 1, true)
		if err != nil {
			t.Error(err)
		}
		got <- unlock
	}()
	waitFor(t, "the exclusive lock to queue", func() bool { return heldLocks(&l) == 2 })
	if _, err := l.lock(cancelled(), 0, 1, false); err == nil {
		t.Fatal("a shared lock overtook a waiting exclusive one")
	}
	s1()
	unlock := <-got
	if _, err := l.lock(cancelled(), 0, 1, false); err == nil {
		t.Fatal("a shared lock was granted over an exclusive one")
	}
	unlock()
	if s, err := l.lock(cancelled(), 0, 16, false); err != nil {
		t.Fatalf("the blocks stay locked after every unlock: %v", err)
	} else {
		s()
	}
	if n := heldLocks(&l); n != 0 {
		t.Fatalf("%d locks held at the end", n)
	}
}

// gatedReadDev holds reads at offset 0 until open is closed, and logs
// the writes.
type gatedReadDev struct {
	*memDev
	entered chan struct{}
	open    chan struct{}
	mu      sync.Mutex
	writes  [][]byte
}

func (d *gatedReadDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off == 0 {
		select {
		case d.entered <- struct{}{}:
		default: // signalled already (ORWRITE reads twice)
		}
		<-d.open
	}
	return d.memDev.ReadAt(ctx, p, off)
}

// CompareAndWrite goes through the gated read and the logged write (and
// is atomic only through the LU's extent lock, which is what the test
// shows).
func (d *gatedReadDev) CompareAndWrite(ctx context.Context, off int64, cmp, data []byte, fua bool) (int64, error) {
	cur := make([]byte, len(cmp))
	if err := d.ReadAt(ctx, cur, off); err != nil {
		return 0, err
	}
	if i := blockdev.Mismatch(cur, cmp); i >= 0 {
		return i, nil
	}
	return -1, d.WriteAt(ctx, data, off, fua)
}

func (d *gatedReadDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.mu.Lock()
	d.writes = append(d.writes, bytes.Clone(p))
	d.mu.Unlock()
	return d.memDev.WriteAt(ctx, p, off, fua)
}

func (d *gatedReadDev) written() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.writes)
}

// TestReadModifyWriteAtomic: while a COMPARE AND WRITE or an ORWRITE is
// between its read and its write, a WRITE to the same block from another
// session (another LU of the vdisk, sharing its Reservations) waits, so
// it is not lost under the read-modify-write's result.
func TestReadModifyWriteAtomic(t *testing.T) {
	old := bytes.Repeat([]byte{0x0F}, BlockSize)
	other := bytes.Repeat([]byte{0x33}, BlockSize)
	caw := cdb16(opCompareAndWrite, 0, 0, 0)
	caw[13] = 1
	for _, tc := range []struct {
		name string
		cdb  []byte
		out  []byte
		mine []byte // what the command writes
	}{
		{"COMPARE AND WRITE", caw, append(bytes.Clone(old), bytes.Repeat([]byte{0xC0}, BlockSize)...),
			bytes.Repeat([]byte{0xC0}, BlockSize)},
		{"ORWRITE", cdb16(opORWrite16, 0, 0, 1), bytes.Repeat([]byte{0xF0}, BlockSize),
			bytes.Repeat([]byte{0xFF}, BlockSize)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			base, _ := newLU()
			dev := &gatedReadDev{memDev: base.Dev.(*memDev), entered: make(chan struct{}, 1), open: make(chan struct{})}
			dev.Write(old, 0)
			pr := NewReservations(&MemPRStore{})
			lu1 := &LU{Dev: dev, PR: pr}
			lu2 := &LU{Dev: dev, PR: pr}
			done := make(chan Result)
			go func() { done <- lu1.Execute(ctx, nxA, tc.cdb, tc.out) }()
			<-dev.entered // between its read and its write
			wdone := make(chan Result)
			go func() { wdone <- lu2.Execute(ctx, nxB, cdb10(opWrite10, 0, 0, 1), other) }()
			// The WRITE either queues behind it or (were it not
			// locked out) reaches the device.
			waitFor(t, "the WRITE", func() bool { return heldLocks(&pr.local.extents) == 2 || dev.written() > 0 })
			close(dev.open)
			if r := <-done; r.Status != StatusGood {
				t.Fatalf("%s: %+v", tc.name, r)
			}
			if r := <-wdone; r.Status != StatusGood {
				t.Fatalf("WRITE: %+v", r)
			}
			if len(dev.writes) != 2 || !bytes.Equal(dev.writes[0], tc.mine) || !bytes.Equal(dev.writes[1], other) {
				t.Fatalf("the WRITE came between the read and the write of %s", tc.name)
			}
			r := lu2.Execute(ctx, nxB, cdb10(opRead10, 0, 0, 1), nil)
			if !bytes.Equal(r.Data, other) {
				t.Fatal("the block is not the WRITE's data")
			}
		})
	}
}
