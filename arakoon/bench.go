package arakoon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/ovs-storage/ovs/internal/freeport"

	"go.etcd.io/bbolt"
)

// BenchOptions configure RunBench.
type BenchOptions struct {
	Dir       string        // where the stores go; "" makes (and removes) a temporary directory
	Duration  time.Duration // of each phase; default 3s
	Clients   int           // concurrent workers; default 64
	ValueSize int           // bytes per value; default 128
	Sizes     []int         // cluster sizes; default 1 and 3
	Logger    *slog.Logger
}

// BenchResult is one line of the benchmark.
type BenchResult struct {
	Name       string
	Sets, Gets float64 // operations per second
}

// RunBench measures sets/s and linearizable gets/s of in-process arakoon
// clusters on loopback, next to a bare bbolt store on the same disk with
// the same number of concurrent workers, and prints a table with ratios
// to w.
func RunBench(ctx context.Context, o BenchOptions, w io.Writer) ([]BenchResult, error) {
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	if o.Clients <= 0 {
		o.Clients = 64
	}
	if o.ValueSize <= 0 {
		o.ValueSize = 128
	}
	if len(o.Sizes) == 0 {
		o.Sizes = []int{1, 3}
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "arakoon-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	value := make([]byte, o.ValueSize)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	fmt.Fprintf(w, "arakoon bench: %d concurrent clients, %d-byte values, %v per phase, %d CPUs, stores in %s\n",
		o.Clients, o.ValueSize, o.Duration, runtime.NumCPU(), o.Dir)

	var results []BenchResult
	upd, batch, err := benchBolt(ctx, o, value)
	if err != nil {
		return nil, fmt.Errorf("bbolt baseline: %w", err)
	}
	results = append(results, upd, batch)
	for _, n := range o.Sizes {
		r, err := benchCluster(ctx, o, n, value)
		if err != nil {
			return results, fmt.Errorf("arakoon %d-node: %w", n, err)
		}
		results = append(results, r)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store\tsets/s\tgets/s\tsets vs bbolt Batch\tgets vs bbolt View\t")
	for _, r := range results {
		gets := fmt.Sprintf("%.0f", r.Gets)
		gr := fmt.Sprintf("%.3f", r.Gets/batch.Gets)
		if r.Gets == 0 {
			gets, gr = "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%.3f\t%s\t\n", r.Name, r.Sets, gets, r.Sets/batch.Sets, gr)
	}
	tw.Flush()
	return results, nil
}

// phase runs fn from o.Clients workers for o.Duration and returns ops/s.
func phase(ctx context.Context, o BenchOptions, fn func(ctx context.Context, worker, i int) error) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	var ops atomic.Int64
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	start := time.Now()
	for wk := range o.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				if err := fn(ctx, wk, i); err != nil {
					if ctx.Err() == nil {
						errOnce.Do(func() { firstErr = err; cancel() })
					}
					return
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(ops.Load()) / time.Since(start).Seconds(), nil
}

func benchKey(worker, i int) []byte {
	return []byte("bench/" + strconv.Itoa(worker) + "/" + strconv.Itoa(i))
}

func benchBolt(ctx context.Context, o BenchOptions, value []byte) (BenchResult, BenchResult, error) {
	path := filepath.Join(o.Dir, "baseline.db")
	db, err := bbolt.Open(path, 0o600, boltOptions())
	if err != nil {
		return BenchResult{}, BenchResult{}, err
	}
	defer db.Close()
	bk := []byte("kv")
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucketIfNotExists(bk); return err }); err != nil {
		return BenchResult{}, BenchResult{}, err
	}
	put := func(k []byte) func(tx *bbolt.Tx) error {
		return func(tx *bbolt.Tx) error { return tx.Bucket(bk).Put(k, value) }
	}
	upd := BenchResult{Name: "bbolt, one synced Update per set"}
	upd.Sets, err = phase(ctx, o, func(_ context.Context, wk, i int) error {
		return db.Update(put(append([]byte("u"), benchKey(wk, i)...)))
	})
	if err != nil {
		return upd, BenchResult{}, err
	}
	written := make([]atomic.Int64, o.Clients)
	batch := BenchResult{Name: "bbolt, Batch (coalesced writers)"}
	batch.Sets, err = phase(ctx, o, func(_ context.Context, wk, i int) error {
		err := db.Batch(put(benchKey(wk, i)))
		if err == nil {
			written[wk].Store(int64(i + 1))
		}
		return err
	})
	if err != nil {
		return upd, batch, err
	}
	batch.Gets, err = phase(ctx, o, func(_ context.Context, wk, i int) error {
		n := written[wk].Load()
		if n == 0 {
			return nil
		}
		k := benchKey(wk, rand.IntN(int(n)))
		return db.View(func(tx *bbolt.Tx) error {
			if tx.Bucket(bk).Get(k) == nil {
				return fmt.Errorf("bbolt lost %s", k)
			}
			return nil
		})
	})
	return upd, batch, err
}

func benchCluster(ctx context.Context, o BenchOptions, n int, value []byte) (BenchResult, error) {
	res := BenchResult{Name: fmt.Sprintf("arakoon, %d node", n)}
	if n > 1 {
		res.Name += "s"
	}
	cfg := &Config{Cluster: "bench"}
	addrs, err := freeport.Addrs(2 * n)
	if err != nil {
		return res, err
	}
	for i := range n {
		id := "b" + strconv.Itoa(i+1)
		cfg.Nodes = append(cfg.Nodes, NodeConfig{ID: id, Client: addrs[2*i], Raft: addrs[2*i+1], Data: filepath.Join(o.Dir, fmt.Sprintf("c%d-%s", n, id))})
	}
	cfg.Tuning = Tuning{HeartbeatTimeout: Duration(500 * time.Millisecond), ElectionTimeout: Duration(500 * time.Millisecond)}
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	var servers []*Server
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()
	for _, nd := range cfg.Nodes {
		s, err := Start(cfg, nd.ID, ServerOptions{Logger: o.Logger})
		if err != nil {
			return res, err
		}
		servers = append(servers, s)
	}
	// One client per 16 workers, like a handful of processes sharing a cluster.
	nc := (o.Clients + 15) / 16
	clients := make([]*Client, nc)
	for i := range clients {
		c, err := NewClient(cfg.ClientConfig())
		if err != nil {
			return res, err
		}
		defer c.Close()
		clients[i] = c
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if _, err := clients[0].WhoMaster(wctx); err == nil {
			break
		} else if wctx.Err() != nil {
			return res, fmt.Errorf("no master: %w", err)
		}
	}
	// Register every client's session before timing.
	for _, c := range clients {
		if err := c.Set(wctx, []byte("bench/warmup"), value); err != nil {
			return res, err
		}
	}
	written := make([]atomic.Int64, o.Clients)
	res.Sets, err = phase(ctx, o, func(ctx context.Context, wk, i int) error {
		err := clients[wk%nc].Set(ctx, benchKey(wk, i), value)
		if err == nil {
			written[wk].Store(int64(i + 1))
		}
		return err
	})
	if err != nil {
		return res, err
	}
	res.Gets, err = phase(ctx, o, func(ctx context.Context, wk, i int) error {
		n := written[wk].Load()
		if n == 0 {
			return nil
		}
		k := benchKey(wk, rand.IntN(int(n)))
		_, err := clients[wk%nc].Get(ctx, k)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("acknowledged key %s not found", k)
		}
		return err
	})
	return res, err
}
