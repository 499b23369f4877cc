package volumedriver

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
)

// TestCompareAndWriteRace: callers racing with the same compare buffer
// for one block (ATS: every host read the lock record, each tries to take
// it) - exactly one wins each round, the block holds its data, and every
// loser is told where the block differs from what it compared.
func TestCompareAndWriteRace(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	if _, err := d.Create(ctx, "vd", 1<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("vd")
	// An unaligned block inside a cluster: the write is a read-modify-write.
	const off, bs, racers, rounds = 4096 + 512, 512, 8, 40
	cur := make([]byte, bs)
	for round := range rounds {
		k := round * 13 % bs // the first byte the racers change
		res := make([]int64, racers)
		errs := make([]error, racers)
		datas := make([][]byte, racers)
		var start, wg sync.WaitGroup
		start.Add(1)
		for g := range racers {
			data := bytes.Clone(cur)
			for j := k; j < bs; j++ {
				data[j] = cur[j] + byte(1+g)
			}
			datas[g] = data
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				res[g], errs[g] = v.CompareAndWrite(ctx, off, bytes.Clone(cur), data, round%4 == 0)
			}()
		}
		start.Done()
		wg.Wait()
		winner := -1
		for g := range racers {
			if errs[g] != nil {
				t.Fatalf("round %d racer %d: %v", round, g, errs[g])
			}
			if res[g] == -1 {
				if winner >= 0 {
					t.Fatalf("round %d: racers %d and %d both won", round, winner, g)
				}
				winner = g
			} else if res[g] != int64(k) {
				t.Fatalf("round %d racer %d: miscompare at %d, want %d", round, g, res[g], k)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody won", round)
		}
		got := make([]byte, bs)
		if err := v.ReadAt(ctx, got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, datas[winner]) {
			t.Fatalf("round %d: the block does not hold the winner's data", round)
		}
		cur = got
	}
	// The neighbours in the cluster are untouched.
	around := make([]byte, 4096)
	if err := v.ReadAt(ctx, around, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(around[:512], make([]byte, 512)) || !bytes.Equal(around[1024:], make([]byte, 3072)) {
		t.Fatal("compare and write changed bytes outside its block")
	}
}

func TestCompareAndWriteErrors(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	const size = 1 << 20
	for _, n := range []string{"vd", "tpl", "fenced"} {
		if _, err := d.Create(ctx, n, size, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	v, _ := d.Volume("vd")
	old := bytes.Repeat([]byte{7}, 512)
	if err := v.WriteAt(ctx, old, 0, false); err != nil {
		t.Fatal(err)
	}
	tpl, _ := d.Volume("tpl")
	if _, err := d.SetTemplate(ctx, "tpl"); err != nil {
		t.Fatal(err)
	}
	fenced, _ := d.Volume("fenced")
	d.Fence("fenced")

	wrong := bytes.Clone(old)
	wrong[300] = 8
	blk := func(b byte) []byte { return bytes.Repeat([]byte{b}, 512) }
	for _, tc := range []struct {
		name      string
		v         *Volume
		off       int64
		cmp, data []byte
		want      int64
		err       []error
	}{
		{"miscompare", v, 0, wrong, blk(9), 300, nil},
		{"miscompare in the first byte", v, 0, blk(0), blk(9), 0, nil},
		{"empty", v, 0, nil, nil, -1, nil},
		{"lengths differ", v, 0, old, blk(9)[:511], 0, []error{ErrInvalidArgument, syscall.EINVAL}},
		{"too long", v, 0, make([]byte, blockdev.MaxCompareAndWrite+1), make([]byte, blockdev.MaxCompareAndWrite+1), 0,
			[]error{ErrInvalidArgument, syscall.EINVAL}},
		{"past the end", v, size - 256, blk(0), blk(9), 0, []error{ErrOutOfRange, syscall.ENOSPC}},
		{"negative offset", v, -512, blk(0), blk(9), 0, []error{ErrOutOfRange}},
		{"template", tpl, 0, blk(0), blk(9), 0, []error{ErrReadOnly, syscall.EPERM}},
		{"fenced", fenced, 0, blk(0), blk(9), 0, []error{ErrFenced}},
		{"match", v, 0, old, blk(9), -1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := make([]byte, 512)
			if err := v.ReadAt(ctx, before, 0); err != nil {
				t.Fatal(err)
			}
			got, err := tc.v.CompareAndWrite(ctx, tc.off, tc.cmp, tc.data, false)
			for _, want := range tc.err {
				if !errors.Is(err, want) {
					t.Fatalf("err = %v; want %v", err, want)
				}
			}
			if tc.err == nil && (err != nil || got != tc.want) {
				t.Fatalf("= %d, %v; want %d", got, err, tc.want)
			}
			after := make([]byte, 512)
			if err := v.ReadAt(ctx, after, 0); err != nil {
				t.Fatal(err)
			}
			wrote := tc.v == v && tc.err == nil && tc.want == -1 && len(tc.data) > 0
			if want := map[bool][]byte{false: before, true: tc.data}[wrote]; !bytes.Equal(after, want) {
				t.Fatalf("block holds %v..., want %v...", after[:4], want[:4])
			}
		})
	}

	// Waiting for another CompareAndWrite honours the context.
	v.caw <- struct{}{}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := v.CompareAndWrite(cctx, 0, blk(9), blk(1), false); !errors.Is(err, context.Canceled) {
		t.Fatalf("with the lock held and ctx cancelled: %v", err)
	}
	<-v.caw
}
