package ec

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/internal/crc32c"
	"github.com/ovs-storage/ovs/scos/internal/fsutil"
)

// An in-process ASD whose availability a test controls. It serves HTTP and
// the binary read protocol on one loopback port (asd.Server.ServeHandler);
// its modes apply to HTTP requests (ServeHTTP) and to the connections
// themselves (modeListener), so binary reads see them too.
type fakeASD struct {
	s       *asd.Server
	srv     *fakeASDServer
	dir     string
	spec    asdSpec
	mode    atomic.Int32 // asdUp, asdDown, asdStalled
	release chan struct{}
	mu      sync.Mutex
	unstall chan struct{} // closed when a stall ends
	handler http.Handler
}

const (
	asdUp int32 = iota
	asdDown
	asdStalled
)

func (a *fakeASD) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch a.mode.Load() {
	case asdDown:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
				return
			}
		}
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	case asdStalled:
		a.mu.Lock()
		unstall := a.unstall
		a.mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-a.release:
		case <-unstall:
		}
		panic(http.ErrAbortHandler) // the request fails, as a stopped ASD's would
	}
	a.handler.ServeHTTP(w, r)
}

// set changes the ASD's mode; leaving asdStalled fails the stalled requests.
func (a *fakeASD) set(mode int32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.mode.Load() == asdStalled && mode != asdStalled {
		close(a.unstall)
	}
	if mode == asdStalled && a.mode.Load() != asdStalled {
		a.unstall = make(chan struct{})
	}
	a.mode.Store(mode)
}

// fragments counts the fragment files the ASD holds.
func (a *fakeASD) fragments(t *testing.T) int {
	t.Helper()
	n := 0
	// The ASD keeps its fragments in fan-out directories under one
	// directory: FragmentPath's grandparent.
	frags := filepath.Dir(filepath.Dir(asd.FragmentPath(a.dir, "x")))
	filepath.WalkDir(frags, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !strings.HasPrefix(d.Name(), fsutil.TmpPrefix) {
			n++
		}
		return nil
	})
	return n
}

type ecEnv struct {
	t    *testing.T
	kv   *BoltKV
	b    *Backend
	asds []*fakeASD
	cfg  Config
}

type asdSpec struct{ node, site string }

func spreadNodes(n int) []asdSpec {
	var s []asdSpec
	for i := range n {
		s = append(s, asdSpec{fmt.Sprintf("node%d", i), "site1"})
	}
	return s
}

func newFakeASD(t *testing.T, spec asdSpec, capacity int64) *fakeASD {
	t.Helper()
	a := &fakeASD{dir: t.TempDir(), spec: spec, release: make(chan struct{})}
	s, err := asd.Open(asd.Config{Dir: a.dir, Node: spec.node, Site: spec.site, Capacity: capacity})
	if err != nil {
		t.Fatal(err)
	}
	a.s, a.handler = s, s.Handler()
	a.srv = serveFakeASD(t, a)
	t.Cleanup(func() {
		a.set(asdUp)
		close(a.release)
		a.srv.Close()
	})
	return a
}

type fakeASDServer struct {
	URL    string
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *fakeASDServer) Close() {
	s.cancel()
	<-s.done
}

func serveFakeASD(tb testing.TB, a *fakeASD) *fakeASDServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &fakeASDServer{URL: "http://" + ln.Addr().String(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(srv.done)
		a.s.ServeHandler(ctx, &modeListener{Listener: ln, a: a}, a)
	}()
	return srv
}

// modeListener hands out connections that fail while the ASD is down and
// stop reading while it is stalled.
type modeListener struct {
	net.Listener
	a *fakeASD
}

func (l *modeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &modeConn{Conn: c, a: l.a}, nil
}

type modeConn struct {
	net.Conn
	a *fakeASD
}

func (c *modeConn) Read(p []byte) (int, error) {
	for {
		switch c.a.mode.Load() {
		case asdDown:
			c.Conn.Close()
			return 0, net.ErrClosed
		case asdStalled:
			c.a.mu.Lock()
			unstall := c.a.unstall
			c.a.mu.Unlock()
			select {
			case <-c.a.release:
				return 0, net.ErrClosed
			case <-unstall:
				// What was asked during the stall fails, as a stopped
				// ASD's requests would.
				c.Conn.Close()
				return 0, net.ErrClosed
			}
		}
		return c.Conn.Read(p)
	}
}

// newECEnv starts ASDs and a backend on them. cfg's zero fields take
// fast test defaults; maintenance runs only when the test calls it.
func newECEnv(t *testing.T, specs []asdSpec, cfg Config) *ecEnv {
	t.Helper()
	e := &ecEnv{t: t}
	for _, s := range specs {
		e.asds = append(e.asds, newFakeASD(t, s, 1<<30))
	}
	kv, err := OpenBoltKV(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	e.kv = kv
	cfg.KV = kv
	if cfg.HealthInterval == 0 {
		cfg.HealthInterval = 50 * time.Millisecond
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = 300 * time.Millisecond
	}
	if cfg.FragmentTimeout == 0 {
		cfg.FragmentTimeout = time.Second
	}
	if cfg.HedgeAfter == 0 {
		cfg.HedgeAfter = 100 * time.Millisecond
	}
	if cfg.MaintenanceInterval == 0 {
		cfg.MaintenanceInterval = -1
	}
	if testing.Verbose() && cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	e.cfg = cfg
	e.open()
	for _, a := range e.asds {
		if _, err := e.b.AddASD(context.Background(), a.srv.URL); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *ecEnv) open() {
	b, err := New(context.Background(), e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { b.Close() })
	e.b = b
}

// waitHealth waits until the backend sees exactly the ASDs up that are.
func (e *ecEnv) waitHealth() {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok := true
		for _, a := range e.asds {
			_, up := e.b.asd(a.s.ID())
			if up != (a.mode.Load() == asdUp) {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal("the health monitor did not catch up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *ecEnv) asdByID(id string) *fakeASD {
	for _, a := range e.asds {
		if a.s.ID() == id {
			return a
		}
	}
	e.t.Fatalf("no ASD %s", id)
	return nil
}

func (e *ecEnv) totalFragments() int {
	n := 0
	for _, a := range e.asds {
		n += a.fragments(e.t)
	}
	return n
}

func mustPut(t *testing.T, b scos.Backend, ns, name string, data []byte) {
	t.Helper()
	if err := b.Put(context.Background(), ns, name, data, false); err != nil {
		t.Fatalf("put %s/%s: %v", ns, name, err)
	}
}

func checkGet(t *testing.T, b scos.Backend, ns, name string, want []byte) {
	t.Helper()
	got, err := b.Get(context.Background(), ns, name)
	if err != nil {
		t.Fatalf("get %s/%s: %v", ns, name, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("get %s/%s: wrong data (%d bytes, want %d)", ns, name, len(got), len(want))
	}
}

func TestECBackendBasics(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42"})
	b := e.b
	if err := b.CreateNamespace(ctx, "ns1"); err != nil {
		t.Fatal(err)
	}
	if err := b.CreateNamespace(ctx, "ns1"); !errors.Is(err, scos.ErrNamespaceExists) {
		t.Fatalf("duplicate namespace: %v", err)
	}
	sizes := []int{0, 1, 3, 4, 5, 4095, 4096, 65537, 1<<20 + 3, 4 << 20}
	objs := map[string][]byte{}
	for i, n := range sizes {
		name := fmt.Sprintf("obj%02d", i)
		objs[name] = randBytes(uint64(n)+1, n)
		mustPut(t, b, "ns1", name, objs[name])
	}
	if err := b.Put(ctx, "ns1", "obj01", []byte("x"), false); !errors.Is(err, scos.ErrObjectExists) {
		t.Fatalf("put without overwrite: %v", err)
	}
	for name, data := range objs {
		checkGet(t, b, "ns1", name, data)
		st, err := b.Stat(ctx, "ns1", name)
		if err != nil || st.Size != int64(len(data)) {
			t.Fatalf("stat %s: %v %v", name, st, err)
		}
	}
	// Ranged reads at every kind of boundary.
	big := objs["obj09"]
	fsz := int64(1 << 20)
	for _, r := range []struct{ off, n int64 }{
		{0, 4096}, {fsz - 10, 20}, {fsz, 4096}, {3*fsz - 1, fsz + 1}, {4*fsz - 4096, 4096}, {0, 4 * fsz}, {123456, 0},
	} {
		p := make([]byte, r.n)
		if err := b.ReadAt(ctx, "ns1", "obj09", p, r.off); err != nil || !bytes.Equal(p, big[r.off:r.off+r.n]) {
			t.Fatalf("ReadAt [%d,+%d): %v", r.off, r.n, err)
		}
	}
	if err := b.ReadAt(ctx, "ns1", "obj09", make([]byte, 10), 4*fsz-5); err == nil || !strings.Contains(err.Error(), "past the end") {
		t.Fatalf("read past the end: %v", err)
	}
	m, _ := b.ObjectManifest(ctx, "ns1", "obj09")
	if m.Policy != (Policy{4, 2, 6, 1}) || len(m.Fragments) != 6 || m.FragmentSize != fsz {
		t.Fatalf("manifest %+v", m)
	}
	seen := map[string]bool{}
	for _, f := range m.Fragments {
		if seen[f.ASD] {
			t.Fatalf("two fragments on %s", f.ASD)
		}
		seen[f.ASD] = true
	}
	list, err := b.List(ctx, "ns1", "obj0")
	if err != nil || len(list) != len(sizes) || list[0].Name != "obj00" || list[9].Size != 4<<20 {
		t.Fatalf("list %v %v", list, err)
	}
	// Overwrite: new content, and the old fragments are deleted.
	before := e.totalFragments()
	if err := b.Put(ctx, "ns1", "obj09", []byte("small now"), true); err != nil {
		t.Fatal(err)
	}
	checkGet(t, b, "ns1", "obj09", []byte("small now"))
	if _, err := b.CollectGarbage(ctx); err != nil {
		t.Fatal(err)
	}
	if after := e.totalFragments(); after != before {
		t.Fatalf("fragments %d before the overwrite, %d after: old ones not collected", before, after)
	}
	if err := b.Delete(ctx, "ns1", "obj09"); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"get deleted":    func() error { _, err := b.Get(ctx, "ns1", "obj09"); return err }(),
		"delete deleted": b.Delete(ctx, "ns1", "obj09"),
		"stat deleted":   func() error { _, err := b.Stat(ctx, "ns1", "obj09"); return err }(),
	} {
		if !errors.Is(err, scos.ErrObjectNotFound) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, err := range map[string]error{
		"get in missing ns":  func() error { _, err := b.Get(ctx, "nope", "x"); return err }(),
		"put in missing ns":  b.Put(ctx, "nope", "x", nil, true),
		"list of missing ns": func() error { _, err := b.List(ctx, "nope", ""); return err }(),
	} {
		if !errors.Is(err, scos.ErrNamespaceNotFound) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, bad := range []string{"", "../x", ".hidden", "a/b"} {
		if err := b.Put(ctx, "ns1", bad, nil, true); !errors.Is(err, scos.ErrInvalidName) {
			t.Errorf("put %q: %v", bad, err)
		}
	}
	if err := b.DeleteNamespace(ctx, "ns1"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.NamespaceExists(ctx, "ns1"); ok {
		t.Fatal("namespace still there")
	}
	if _, err := b.CollectGarbage(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.totalFragments(); n != 0 {
		t.Fatalf("%d fragments left after deleting the namespace", n)
	}
	// Everything is in the KV store: a new backend on it sees the same.
	b.CreateNamespace(ctx, "ns2")
	mustPut(t, b, "ns2", "o", []byte("persisted"))
	b.Close()
	e.open()
	checkGet(t, e.b, "ns2", "o", []byte("persisted"))
	if nss, _ := e.b.ListNamespaces(ctx); len(nss) != 1 || nss[0] != "ns2" {
		t.Fatalf("namespaces after reopen: %v", nss)
	}
}

func TestECBackendFailures(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42"})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	objs := map[string][]byte{}
	for i := range 8 {
		name := fmt.Sprintf("o%d", i)
		objs[name] = randBytes(uint64(i), 300000+i*77777)
		mustPut(t, b, "ns", name, objs[name])
	}
	checkAll := func() {
		t.Helper()
		for name, data := range objs {
			checkGet(t, b, "ns", name, data)
			p := make([]byte, 5000)
			if err := b.ReadAt(ctx, "ns", name, p, 70000); err != nil || !bytes.Equal(p, data[70000:75000]) {
				t.Fatalf("ReadAt %s: %v", name, err)
			}
		}
	}
	tests := []struct {
		name  string
		modes []int32 // of ASDs 0..
	}{
		{"two down", []int32{asdDown, asdDown}},
		{"two stalled", []int32{asdStalled, asdStalled}},
		{"one down one stalled", []int32{asdUp, asdUp, asdUp, asdDown, asdStalled}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for i, m := range tc.modes {
				e.asds[i].set(m)
			}
			defer func() {
				for _, a := range e.asds {
					a.set(asdUp)
				}
				e.waitHealth()
			}()
			start := time.Now()
			checkAll() // before the health monitor notices
			t.Logf("reads with m ASDs failing: %v", time.Since(start))
			e.waitHealth()
			checkAll()
		})
	}
	// m+1 down: a clear error, no damage; back: all good.
	for i := range 3 {
		e.asds[i].set(asdDown)
	}
	e.waitHealth()
	_, err := b.Get(ctx, "ns", "o1")
	if !errors.Is(err, ErrObjectUnavailable) || !strings.Contains(err.Error(), "fragments readable") {
		t.Fatalf("read with m+1 down: %v", err)
	}
	t.Logf("m+1 down: %v", err)
	// A put falls back to nothing (4+2 only), and fails clearly.
	if err := b.Put(ctx, "ns", "new", []byte("data"), false); !errors.Is(err, ErrInsufficientASDs) {
		t.Fatalf("put with 3 of 6 up: %v", err)
	}
	for _, a := range e.asds {
		a.set(asdUp)
	}
	e.waitHealth()
	checkAll()
	rep, err := b.Repair(ctx)
	if err != nil || rep.Flagged != 0 || rep.Failed != 0 {
		t.Fatalf("repair after outage: %+v %v", rep, err)
	}
}

func TestECBackendCorruption(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42"})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	data := randBytes(1, 2<<20)
	mustPut(t, b, "ns", "obj", data)
	mustPut(t, b, "ns", "other", data[:100000])
	m, _ := b.ObjectManifest(ctx, "ns", "obj")
	flip := func(m *Manifest, i int, off int64) string {
		a := e.asdByID(m.Fragments[i].ASD)
		path := asd.FragmentPath(a.dir, m.FragmentKey(i))
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 16)
		st, _ := f.Stat()
		at := st.Size() - m.FragmentSize + off
		f.ReadAt(buf, at)
		for j := range buf {
			buf[j] ^= 0xff
		}
		f.WriteAt(buf, at)
		return path
	}
	// Corrupt data fragment 1 where a ranged read will touch it.
	path := flip(m, 1, 1000)
	p := make([]byte, 4096)
	off := m.FragmentSize + 512
	if err := b.ReadAt(ctx, "ns", "obj", p, off); err != nil || !bytes.Equal(p, data[off:off+4096]) {
		t.Fatalf("ranged read over a corrupt fragment: %v", err)
	}
	checkGet(t, b, "ns", "obj", data)
	st, _ := b.Status(ctx)
	if st.Counters.CorruptFound != 1 || st.Flagged != 1 || st.Degraded != 1 {
		t.Fatalf("corruption not reported: %+v", st)
	}
	rep, err := b.RepairFlagged(ctx)
	if err != nil || rep.Repaired != 1 || rep.FragmentsRebuilt != 1 || rep.Remaining != 0 {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	c, _ := b.asd(m.Fragments[1].ASD)
	if _, err := c.Verify(ctx, m.FragmentKey(1)); err != nil {
		t.Fatalf("repaired fragment %s: %v", path, err)
	}
	// A scrub finds corruption no read touched: parity fragment 5 of
	// "other", and a fragment file deleted behind the ASD's back.
	mo, _ := b.ObjectManifest(ctx, "ns", "other")
	flip(mo, 5, 10)
	os.Remove(asd.FragmentPath(e.asdByID(mo.Fragments[2].ASD).dir, mo.FragmentKey(2)))
	rep, err = b.Scrub(ctx)
	if err != nil || rep.Corrupt != 1 || rep.Missing != 1 || rep.Repaired != 1 || rep.Remaining != 0 || rep.Scrubbed != 12 {
		t.Fatalf("scrub: %+v %v", rep, err)
	}
	rep, _ = b.Scrub(ctx)
	if rep.Corrupt+rep.Missing != 0 {
		t.Fatalf("second scrub still finds problems: %+v", rep)
	}
	checkGet(t, b, "ns", "other", data[:100000])
}

func TestECBackendFallbackAndUpgrade(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{}) // LocalPreset: 4+2, 4+1, 2+1
	b := e.b
	b.CreateNamespace(ctx, "ns")
	e.asds[0].set(asdDown)
	e.asds[1].set(asdDown)
	e.waitHealth()
	data := randBytes(3, 1<<20)
	mustPut(t, b, "ns", "obj", data)
	m, _ := b.ObjectManifest(ctx, "ns", "obj")
	if m.Policy.K != 2 || m.Policy.M != 1 {
		t.Fatalf("with 4 of 6 ASDs up the put used %s, want the 2+1 fallback", m.Policy)
	}
	e.asds[0].set(asdUp)
	e.waitHealth()
	rep, err := b.Repair(ctx)
	if err != nil || rep.Upgraded != 1 {
		t.Fatalf("upgrade with 5 up: %+v %v", rep, err)
	}
	m, _ = b.ObjectManifest(ctx, "ns", "obj")
	if m.Policy.K != 4 || m.Policy.M != 1 {
		t.Fatalf("after one ASD came back: %s, want 4+1", m.Policy)
	}
	e.asds[1].set(asdUp)
	e.waitHealth()
	if rep, err := b.Repair(ctx); err != nil || rep.Upgraded != 1 {
		t.Fatalf("upgrade with 6 up: %+v %v", rep, err)
	}
	m, _ = b.ObjectManifest(ctx, "ns", "obj")
	if m.Policy.K != 4 || m.Policy.M != 2 {
		t.Fatalf("after all came back: %s, want 4+2", m.Policy)
	}
	checkGet(t, b, "ns", "obj", data)
	b.CollectGarbage(ctx)
	if n := e.totalFragments(); n != 6 {
		t.Fatalf("%d fragment files, want 6", n)
	}
	if st, _ := b.Status(ctx); st.Counters.PutFallbacks != 1 || st.Counters.PolicyUpgrades != 2 || st.Degraded != 0 {
		t.Fatalf("status %+v", st)
	}
}

func TestECBackendLostASDAndDecommission(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(8), Config{
		Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42",
		LostAfter: 300 * time.Millisecond,
	})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	objs := map[string][]byte{}
	for i := range 12 {
		name := fmt.Sprintf("o%02d", i)
		objs[name] = randBytes(uint64(i), 100000+i*1000)
		mustPut(t, b, "ns", name, objs[name])
	}
	lost := e.asds[0]
	lostID := lost.s.ID()
	held := lost.fragments(t)
	if held == 0 {
		t.Fatal("placement put nothing on ASD 0; pick another")
	}
	lost.set(asdDown)
	e.waitHealth()
	if rep, _ := b.Repair(ctx); rep.FragmentsMoved != 0 {
		t.Fatalf("moved fragments before LostAfter: %+v", rep)
	}
	time.Sleep(400 * time.Millisecond)
	rep, err := b.Repair(ctx)
	if err != nil || rep.FragmentsMoved != held || rep.Remaining != 0 {
		t.Fatalf("repair of a lost ASD holding %d fragments: %+v %v", held, rep, err)
	}
	// Full redundancy: 6 fragments per object on ASDs that are up, and
	// the object survives two more failures.
	count := 0
	for _, a := range e.asds[1:] {
		count += a.fragments(t)
	}
	if count != 6*len(objs) {
		t.Fatalf("%d fragments on the remaining ASDs, want %d", count, 6*len(objs))
	}
	e.asds[1].set(asdDown)
	e.asds[2].set(asdDown)
	e.waitHealth()
	for name, data := range objs {
		checkGet(t, b, "ns", name, data)
	}
	e.asds[1].set(asdUp)
	e.asds[2].set(asdUp)
	e.waitHealth()
	if err := b.RemoveASD(ctx, lostID, false); err != nil {
		t.Fatalf("removing the drained lost ASD: %v", err)
	}
	// Decommission: everything moves off, then it can be removed.
	dec := e.asds[3]
	if err := b.RemoveASD(ctx, dec.s.ID(), false); !errors.Is(err, ErrASDInUse) {
		t.Fatalf("removing an ASD in use: %v", err)
	}
	if err := b.DecommissionASD(ctx, dec.s.ID()); err != nil {
		t.Fatal(err)
	}
	rep, err = b.Repair(ctx)
	if err != nil || rep.Remaining != 0 || len(rep.Drained) != 1 || rep.Drained[0] != dec.s.ID() {
		t.Fatalf("decommission: %+v %v", rep, err)
	}
	b.CollectGarbage(ctx)
	if n := dec.fragments(t); n != 0 {
		t.Fatalf("%d fragments left on the decommissioned ASD", n)
	}
	if err := b.RemoveASD(ctx, dec.s.ID(), false); err != nil {
		t.Fatal(err)
	}
	for name, data := range objs {
		checkGet(t, b, "ns", name, data)
	}
	asds, _ := b.ListASDs(ctx)
	if len(asds) != 6 {
		t.Fatalf("%d ASDs listed, want 6", len(asds))
	}
}

func TestECBackendGeo(t *testing.T) {
	ctx := context.Background()
	var specs []asdSpec
	for s := range 3 {
		for n := range 3 {
			specs = append(specs, asdSpec{fmt.Sprintf("s%dn%d", s, n), fmt.Sprintf("site%d", s)})
		}
	}
	geo := Preset{Name: "geo", Policies: []Policy{{4, 2, 6, 1}}, MaxPerSite: 2}
	e := newECEnv(t, specs, Config{Presets: []Preset{geo}, Preset: "geo"})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	objs := map[string][]byte{}
	for i := range 10 {
		name := fmt.Sprintf("o%d", i)
		objs[name] = randBytes(uint64(i), 50000+i)
		mustPut(t, b, "ns", name, objs[name])
		m, _ := b.ObjectManifest(ctx, "ns", name)
		perSite := map[string]int{}
		for _, f := range m.Fragments {
			perSite[e.asdByID(f.ASD).spec.site]++
		}
		for site, n := range perSite {
			if n > 2 {
				t.Fatalf("%s: %d fragments in %s", name, n, site)
			}
		}
	}
	for site := range 3 {
		for i := range 3 {
			e.asds[site*3+i].set(asdDown)
		}
		e.waitHealth()
		for name, data := range objs {
			checkGet(t, b, "ns", name, data)
		}
		for i := range 3 {
			e.asds[site*3+i].set(asdUp)
		}
		e.waitHealth()
	}
	if err := b.AddPreset(ctx, Preset{Name: "bad", Policies: []Policy{{4, 1, 5, 1}}, MaxPerSite: 2}); !errors.Is(err, ErrInvalidPreset) {
		t.Fatalf("a preset that cannot survive a site: %v", err)
	}
}

func TestECBackendRebalance(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42"})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	objs := map[string][]byte{}
	for i := range 40 {
		name := fmt.Sprintf("o%02d", i)
		objs[name] = randBytes(uint64(i), 1<<20)
		mustPut(t, b, "ns", name, objs[name])
	}
	a := newFakeASD(t, asdSpec{"node6", "site1"}, 1<<30)
	e.asds = append(e.asds, a)
	if _, err := b.AddASD(ctx, a.srv.URL); err != nil {
		t.Fatal(err)
	}
	e.b.probeAll(ctx)
	rep, err := b.Rebalance(ctx)
	if err != nil || rep.FragmentsMoved == 0 {
		t.Fatalf("rebalance: %+v %v", rep, err)
	}
	b.CollectGarbage(ctx)
	b.probeAll(ctx)
	var counts []int
	for _, a := range e.asds {
		counts = append(counts, a.fragments(t))
	}
	t.Logf("fragments per ASD after rebalance: %v", counts)
	if n := a.fragments(t); n < 10 {
		t.Fatalf("only %d fragments on the new ASD", n)
	}
	if e.totalFragments() != 240 {
		t.Fatalf("%d fragments, want 240", e.totalFragments())
	}
	if b.imbalanced() {
		t.Fatal("still imbalanced")
	}
	for name, data := range objs {
		checkGet(t, b, "ns", name, data)
	}
}

func TestECBackendOrphans(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(3), Config{
		Presets: []Preset{{Name: "p21", Policies: []Policy{{2, 1, 3, 1}}}}, Preset: "p21",
		OrphanGrace: time.Nanosecond,
	})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	mustPut(t, b, "ns", "kept", []byte("hello world"))
	c, _ := b.asd(e.asds[0].s.ID())
	c.Put(ctx, "00112233445566778899aabbccddeeff-00", "ns/gone", []byte("orphan"))
	c.Put(ctx, "junk", "", []byte("orphan"))
	rep, err := b.Scrub(ctx)
	if err != nil || rep.Orphans != 2 {
		t.Fatalf("scrub: %+v %v", rep, err)
	}
	if n := e.totalFragments(); n != 3 {
		t.Fatalf("%d fragments, want 3", n)
	}
	checkGet(t, b, "ns", "kept", []byte("hello world"))
}

func TestECBackendFullASDs(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, nil, Config{Presets: []Preset{{Name: "p21", Policies: []Policy{{2, 1, 3, 1}}}}, Preset: "p21"})
	for i := range 4 {
		capacity := int64(1 << 30)
		if i == 0 {
			capacity = 64 << 10 // too small for the fragments below
		}
		a := newFakeASD(t, asdSpec{fmt.Sprintf("n%d", i), "s"}, capacity)
		e.asds = append(e.asds, a)
		if _, err := e.b.AddASD(ctx, a.srv.URL); err != nil {
			t.Fatal(err)
		}
	}
	e.b.CreateNamespace(ctx, "ns")
	for i := range 5 {
		data := randBytes(uint64(i), 200000)
		mustPut(t, e.b, "ns", fmt.Sprint(i), data)
		checkGet(t, e.b, "ns", fmt.Sprint(i), data)
	}
	if n := e.asds[0].fragments(t); n != 0 {
		t.Fatalf("a full ASD got %d fragments", n)
	}
}

func TestECBackendConcurrent(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				name := fmt.Sprintf("w%d-%d", w, i%3)
				data := randBytes(uint64(w*100+i), 20000+i)
				if err := b.Put(ctx, "ns", name, data, true); err != nil {
					errc <- err
					return
				}
				if _, err := b.Get(ctx, "ns", name); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	b.CollectGarbage(ctx)
	if n := e.totalFragments(); n != 8*3*6 {
		t.Fatalf("%d fragments, want %d", n, 8*3*6)
	}
}

func TestECAdminOverHTTP(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(3), Config{})
	srv := httptest.NewServer(NewAdminHandler(e.b))
	defer srv.Close()
	c := NewAdminClient(srv.URL, srv.Client())
	asds, err := c.ListASDs(ctx)
	if err != nil || len(asds) != 3 || asds[0].Health != "up" || asds[0].Capacity != 1<<30 {
		t.Fatalf("asds %+v %v", asds, err)
	}
	if err := c.AddPreset(ctx, Preset{Name: "x", Policies: []Policy{{2, 1, 3, 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.AddPreset(ctx, Preset{Name: "x", Policies: []Policy{{2, 1, 3, 1}}}); !errors.Is(err, ErrPresetExists) {
		t.Fatalf("duplicate preset: %v", err)
	}
	if err := c.AddPreset(ctx, Preset{Name: "y", Policies: []Policy{{2, 1, 1, 1}}}); !errors.Is(err, ErrInvalidPreset) {
		t.Fatalf("bad preset: %v", err)
	}
	ps, err := c.ListPresets(ctx)
	if err != nil || len(ps) != 2 {
		t.Fatalf("presets %v %v", ps, err)
	}
	if err := c.DecommissionASD(ctx, "asd-nope"); !errors.Is(err, ErrASDNotFound) {
		t.Fatalf("decommission unknown: %v", err)
	}
	if _, err := c.AddASD(ctx, "127.0.0.1:1"); !errors.Is(err, asd.ErrUnavailable) {
		t.Fatalf("add dead ASD: %v", err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.ASDs != 3 || st.ASDsUp != 3 {
		t.Fatalf("status %+v %v", st, err)
	}
	if _, err := c.Repair(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestPlacement(t *testing.T) {
	var cands []asdCandidate
	for n := range 4 {
		for d := range 3 {
			cands = append(cands, asdCandidate{ID: fmt.Sprintf("n%dd%d", n, d), Node: fmt.Sprintf("n%d", n), Site: fmt.Sprintf("s%d", n%2), Free: 1 << 30})
		}
	}
	tests := []struct {
		name          string
		n, node, site int
		wantErr       bool
	}{
		{"one per node", 4, 1, 0, false},
		{"two per node", 6, 2, 0, false},
		{"too many for one per node", 5, 1, 0, true},
		{"site bound", 6, 3, 3, false},
		{"site bound too tight", 7, 3, 3, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := placeFragments([]byte("obj"), tc.n, cands, tc.node, tc.site, nil)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v", err)
			}
			if err != nil {
				if !errors.Is(err, ErrInsufficientASDs) {
					t.Fatalf("untyped %v", err)
				}
				return
			}
			again, _ := placeFragments([]byte("obj"), tc.n, cands, tc.node, tc.site, nil)
			perNode, perSite, ids := map[string]int{}, map[string]int{}, map[string]bool{}
			for i, c := range got {
				if again[i].ID != c.ID {
					t.Fatal("not deterministic")
				}
				perNode[c.Node]++
				perSite[c.Site]++
				ids[c.ID] = true
			}
			if len(ids) != tc.n {
				t.Fatal("an ASD chosen twice")
			}
			for _, v := range perNode {
				if v > tc.node {
					t.Fatalf("node bound broken: %v", perNode)
				}
			}
			for _, v := range perSite {
				if tc.site > 0 && v > tc.site {
					t.Fatalf("site bound broken: %v", perSite)
				}
			}
		})
	}
	// Weighted by free space: an ASD with 3x the room gets ~3x the picks.
	weighted := []asdCandidate{{ID: "big", Node: "a", Free: 3 << 30}, {ID: "s1", Node: "b", Free: 1 << 30},
		{ID: "s2", Node: "c", Free: 1 << 30}, {ID: "s3", Node: "d", Free: 1 << 30}}
	hits := map[string]int{}
	for i := range 20000 {
		got, _ := placeFragments([]byte(fmt.Sprint(i)), 1, weighted, 1, 0, nil)
		hits[got[0].ID]++
	}
	if r := float64(hits["big"]) / float64(hits["s1"]); r < 2.6 || r > 3.4 {
		t.Fatalf("weighting off: %v", hits)
	}
	keys := []string{}
	for k := range hits {
		keys = append(keys, k)
	}
	sort.Strings(keys)
}

func TestPolicyAndPreset(t *testing.T) {
	tests := []struct {
		in   string
		want Policy
		err  bool
	}{
		{"4,2", Policy{4, 2, 6, 6}, false},
		{"4,2,5,1", Policy{4, 2, 5, 1}, false},
		{"8, 3, 11, 2", Policy{8, 3, 11, 2}, false},
		{"4,2,3,1", Policy{}, true}, // c < k
		{"0,2", Policy{}, true},
		{"4", Policy{}, true},
		{"4,x", Policy{}, true},
		{"60,10", Policy{}, true},
	}
	for _, tc := range tests {
		got, err := ParsePolicy(tc.in)
		if (err != nil) != tc.err || !tc.err && got != tc.want {
			t.Errorf("ParsePolicy(%q) = %v, %v", tc.in, got, err)
		}
	}
	if err := LocalPreset().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := &Manifest{Size: 1000, CRC32C: 7, Policy: Policy{4, 2, 6, 1}, Preset: "default", FragmentSize: 250, Created: 99}
	copy(m.ObjectID[:], "0123456789abcdef")
	for i := range 6 {
		m.Fragments = append(m.Fragments, FragmentLocation{ASD: fmt.Sprintf("asd-%d", i), CRC32C: uint32(i)})
	}
	b := m.Encode()
	got, err := DecodeManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Encode(), b) || got.Fragments[5].ASD != "asd-5" || got.FragmentKey(3) != "30313233343536373839616263646566-03" {
		t.Fatalf("%+v", got)
	}
	for i := range b {
		bad := bytes.Clone(b)
		bad[i] ^= 1
		if _, err := DecodeManifest(bad); err == nil {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
	future := bytes.Clone(b)
	future[4] = 9
	if _, err := DecodeManifest(future); !errors.Is(err, scos.ErrUnsupportedFormat) {
		t.Fatalf("version 9: %v", err)
	}
}

func FuzzManifest(f *testing.F) {
	m := &Manifest{Size: 10, CRC32C: 7, Policy: Policy{2, 1, 3, 1}, Preset: "p", FragmentSize: 5,
		Fragments: []FragmentLocation{{"a", 1}, {"b", 2}, {"c", 3}}}
	f.Add(m.Encode())
	f.Add((&Manifest{Policy: Policy{1, 0, 1, 1}, Preset: "p"}).Encode())
	f.Add([]byte("OVSM\x01"))
	check := func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			if !errors.Is(err, scos.ErrCorrupt) && !errors.Is(err, scos.ErrUnsupportedFormat) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if !bytes.Equal(m.Encode(), b) {
			t.Fatal("decode/encode not canonical")
		}
		if m.Size > 0 && int64(m.Policy.K)*m.FragmentSize < m.Size {
			t.Fatal("fragments too small for the object")
		}
		if m.Policy.Validate() != nil || m.Size > 0 && len(m.Fragments) != m.Policy.K+m.Policy.M {
			t.Fatal("an invalid manifest decoded")
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		check(t, b)
		// Again with a valid checksum, to get past it to the fields.
		if len(b) >= 4 {
			fixed := bytes.Clone(b)
			binary.LittleEndian.PutUint32(fixed[len(fixed)-4:], crc32c.Checksum(fixed[:len(fixed)-4]))
			check(t, fixed)
		}
	})
}

// A policy with c < k+m acknowledges a put once c fragments are stored;
// the missing one is flagged and repaired.
func TestECBackendAckAtC(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{
		Presets: []Preset{{Name: "p42c5", Policies: []Policy{{4, 2, 5, 1}}}}, Preset: "p42c5",
	})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	data := randBytes(9, 1<<20)
	mustPut(t, b, "ns", "warmup", data)
	m, _ := b.ObjectManifest(ctx, "ns", "warmup")
	// Stall an ASD the next put will use (placement is by object id, so
	// stall one and put until an object lands on it).
	stalled := e.asdByID(m.Fragments[0].ASD)
	stalled.set(asdStalled)
	start := time.Now()
	mustPut(t, b, "ns", "obj", data)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("put took %v with one ASD stalled: not acknowledged at c", d)
	}
	// Only obj is known to be flagged: on a loaded machine the warmup's
	// last fragment may also have landed after its put was acknowledged.
	if !isFlagged(t, b, "ns/obj") {
		st, _ := b.Status(ctx)
		t.Fatalf("the put with a fragment missing is not flagged: %+v", st)
	}
	checkGet(t, b, "ns", "obj", data)
	stalled.set(asdUp) // the stalled write fails now
	time.Sleep(300 * time.Millisecond)
	e.waitHealth()
	rep, err := b.RepairFlagged(ctx)
	if err != nil || rep.Remaining != 0 || rep.Repaired < 1 || isFlagged(t, b, "ns/obj") {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	b.CollectGarbage(ctx)
	if n := e.totalFragments(); n != 12 {
		t.Fatalf("%d fragments, want 12", n)
	}
}

// isFlagged says whether object key (ns/name) is flagged for repair.
func isFlagged(t *testing.T, b *Backend, key string) bool {
	t.Helper()
	flagged, err := b.flaggedObjects(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return flagged[key]
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestECBackendPutCanceled: a put whose caller gives up mid-way (a
// rollback that made the object moot, a shutdown) returns the context's
// error, warns about no ASD, does not retry elsewhere and does not mark
// the ASDs down: nothing failed on their side.
func TestECBackendPutCanceled(t *testing.T) {
	var logs syncBuffer
	e := newECEnv(t, spreadNodes(6), Config{
		Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42",
		FragmentTimeout: 30 * time.Second,
		Logger:          slog.New(slog.NewTextHandler(&logs, nil)),
	})
	b := e.b
	ctx := context.Background()
	if err := b.CreateNamespace(ctx, "ns"); err != nil {
		t.Fatal(err)
	}
	// Two ASDs hang: the put cannot reach c=6 before it is canceled.
	e.asds[0].set(asdStalled)
	e.asds[1].set(asdStalled)
	pctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- b.Put(pctx, "ns", "obj", randBytes(7, 1<<20), true) }()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled put: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("canceled put did not return")
	}
	if strings.Contains(logs.String(), "put failed on some ASDs") {
		t.Fatalf("a canceled put was logged as an ASD failure:\n%s", logs.String())
	}
	for _, a := range e.asds[2:] {
		if _, up := b.asd(a.s.ID()); !up {
			t.Fatalf("ASD %s marked down by a canceled put", a.s.ID())
		}
	}
	e.asds[0].set(asdUp)
	e.asds[1].set(asdUp)
	if _, err := b.Stat(ctx, "ns", "obj"); !errors.Is(err, scos.ErrObjectNotFound) {
		t.Fatalf("canceled put left an object: %v", err)
	}
}

// randBytes returns n deterministic pseudo-random bytes for seed.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestECBackendHedgeWithCorruptFragment: a read whose hedge fires before
// its data fragments come (a loaded host; here the hedge fires at once)
// and that meets a corrupt fragment still decodes from the fragments that
// come late.
func TestECBackendHedgeWithCorruptFragment(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42",
		HedgeAfter: time.Nanosecond})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	data := randBytes(3, 2<<20)
	mustPut(t, b, "ns", "obj", data)
	m, _ := b.ObjectManifest(ctx, "ns", "obj")
	for _, i := range []int{1, 4} { // a data and a parity fragment: any more and nothing can decode
		a := e.asdByID(m.Fragments[i].ASD)
		path := asd.FragmentPath(a.dir, m.FragmentKey(i))
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		buf := make([]byte, 64)
		at := st.Size() - m.FragmentSize + 100
		f.ReadAt(buf, at)
		for j := range buf {
			buf[j] ^= 0xff
		}
		f.WriteAt(buf, at)
		f.Close()
	}
	for range 5 {
		checkGet(t, b, "ns", "obj", data)
		p := make([]byte, 64<<10)
		off := m.FragmentSize - 4096 // spans fragments 0 and 1
		if err := b.ReadAt(ctx, "ns", "obj", p, off); err != nil || !bytes.Equal(p, data[off:off+int64(len(p))]) {
			t.Fatalf("ranged read over a corrupt fragment with the hedge firing at once: %v", err)
		}
	}
}
