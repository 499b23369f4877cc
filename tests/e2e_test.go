package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCLI drives the vdisk life cycle through the CLI, and checks that bad
// requests fail with exit code 1, a clear "ovs: ..." message, and no change.
func TestCLI(t *testing.T) {
	c := startCluster(t)

	if got := c.list(); len(got) != 0 {
		t.Fatalf("fresh cluster lists vdisks: %+v", got)
	}

	c.create("vm1", "10GiB")
	vi := c.info("vm1")
	if vi.Size != 10*GiB {
		t.Errorf("vm1 size %d, want %d", vi.Size, 10*GiB)
	}
	if vi.Clients != 0 {
		t.Errorf("vm1 has %d clients, want 0", vi.Clients)
	}
	if got := c.sizes(); !maps.Equal(got, map[string]int64{"vm1": 10 * GiB}) {
		t.Errorf("list: %v, want vm1 of 10 GiB", got)
	}
	if out := c.ovsOK("vdisk", "list"); !strings.Contains(out, "vm1") {
		t.Errorf("ovs vdisk list does not show vm1:\n%s", out)
	}
	if out := c.ovsOK("vdisk", "info", "vm1"); !strings.Contains(out, "vm1") {
		t.Errorf("ovs vdisk info vm1 does not show vm1:\n%s", out)
	}

	// --api wins over OVS_API (which points at nothing here).
	dead := "OVS_API=http://127.0.0.1:" + strconv.Itoa(freePorts(t, 1)[0])
	if r := runOVS(t, []string{dead}, "vdisk", "create", "vm2", "--size", "1GiB", "--api", c.APIURL()); r.Code != 0 {
		t.Fatalf("create with --api: %v", r)
	}
	if got := c.info("vm2").Size; got != GiB {
		t.Errorf("vm2 size %d, want %d", got, GiB)
	}
	// No API to talk to: a clear error, not a hang or a panic.
	expectCLIError(t, "list with the API down", runOVS(t, []string{dead}, "vdisk", "list"))

	want := c.sizes()
	bad := []struct {
		what     string
		args     []string
		keywords []string
	}{
		{"duplicate name", []string{"vdisk", "create", "vm1", "--size", "1GiB"}, []string{"exist"}},
		{"size 10XB", []string{"vdisk", "create", "bad", "--size", "10XB"}, []string{"size", "10XB"}},
		{"size -1", []string{"vdisk", "create", "bad", "--size=-1"}, []string{"size", "-1"}},
		{"size 0", []string{"vdisk", "create", "bad", "--size", "0"}, []string{"size"}},
		{"shrink", []string{"vdisk", "resize", "vm1", "--size", "5GiB"}, []string{"shrink", "smaller", "size"}},
		{"resize to 10XB", []string{"vdisk", "resize", "vm1", "--size", "10XB"}, []string{"size", "10XB"}},
		{"info of unknown", []string{"vdisk", "info", "nosuch"}, []string{"not found", "no such", "nosuch"}},
		{"delete of unknown", []string{"vdisk", "delete", "nosuch"}, []string{"not found", "no such", "nosuch"}},
		{"resize of unknown", []string{"vdisk", "resize", "nosuch", "--size", "20GiB"}, []string{"not found", "no such", "nosuch"}},
		{"sync of unknown", []string{"vdisk", "sync", "nosuch"}, []string{"not found", "no such", "nosuch"}},
	}
	for _, b := range bad {
		expectCLIError(t, b.what, c.cli(b.args...), b.keywords...)
		if got := c.sizes(); !maps.Equal(got, want) {
			t.Fatalf("after a failed %s the vdisks changed: %v, want %v", b.what, got, want)
		}
	}

	c.ovsOK("vdisk", "resize", "vm1", "--size", "20GiB")
	if got := c.info("vm1").Size; got != 20*GiB {
		t.Errorf("vm1 size %d after growing, want %d", got, 20*GiB)
	}

	c.ovsOK("vdisk", "sync", "vm1")

	c.ovsOK("vdisk", "delete", "vm2")
	if got := c.sizes(); !maps.Equal(got, map[string]int64{"vm1": 20 * GiB}) {
		t.Errorf("list after deleting vm2: %v", got)
	}
	expectCLIError(t, "info of a deleted vdisk", c.cli("vdisk", "info", "vm2"), "not found", "no such", "vm2")
	c.ovsOK("vdisk", "delete", "vm1")
	if got := c.list(); len(got) != 0 {
		t.Errorf("list after deleting everything: %+v", got)
	}
}

// TestDeleteInUse: deleting a vdisk an NBD client holds open fails without
// --force and works with it; the old connection can't write any more, and
// a new vdisk by the same name starts empty.
func TestDeleteInUse(t *testing.T) {
	needPython(t)
	c := startCluster(t)
	c.create("busy", "64MiB")

	s := openNBD(t, c.UnixURI("busy"))
	if s.size != 64*MiB {
		t.Errorf("export size %d, want %d", s.size, 64*MiB)
	}
	s.mustWrite(0, MiB, 0xab)
	waitFor(t, 10*time.Second, "ovs vdisk info to count the NBD client", func() bool {
		return c.info("busy").Clients >= 1
	})

	expectCLIError(t, "delete of a vdisk in use", c.cli("vdisk", "delete", "busy"),
		"in use", "busy", "open", "client", "connect", "force")
	if _, ok := c.sizes()["busy"]; !ok {
		t.Fatal("a refused delete removed the vdisk")
	}
	s.mustCheck(0, MiB, 0xab) // the refused delete did not disturb the client

	c.ovsOK("vdisk", "delete", "busy", "--force")
	if _, ok := c.sizes()["busy"]; ok {
		t.Fatal("busy still listed after delete --force")
	}
	if err := s.write(MiB, 4*KiB, 0xcd); err == nil {
		t.Error("a write + flush on a connection to a force-deleted vdisk succeeded")
	}
	s.close()

	// Same name again: a new, empty vdisk; nothing of the old one shows.
	c.create("busy", "64MiB")
	s2 := openNBD(t, c.UnixURI("busy"))
	s2.mustCheck(0, 2*MiB, 0)
	s2.close()
	// Once the client has gone, a plain delete works.
	waitFor(t, 10*time.Second, "the client count to drop to 0", func() bool {
		return c.info("busy").Clients == 0
	})
	c.ovsOK("vdisk", "delete", "busy")
}

type nbdinfoList struct {
	Exports []struct {
		Name string `json:"export-name"`
		Size int64  `json:"export-size"`
	} `json:"exports"`
}

type extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	Type   int   `json:"type"` // bit 0: hole, bit 1: reads as zeros
}

func nbdinfoMap(t *testing.T, uri string) []extent {
	t.Helper()
	out := mustRun(t, time.Minute, "nbdinfo", "--map", "--json", uri)
	var ex []extent
	if err := json.Unmarshal([]byte(out), &ex); err != nil {
		t.Fatalf("nbdinfo --map --json: %v in %q", err, out)
	}
	return ex
}

// TestNBDInfo: exports are listed over the unix socket and TCP, and the
// allocation map shows a fresh thin vdisk as a hole and written data as data.
func TestNBDInfo(t *testing.T) {
	needTools(t, "nbdinfo")
	needPython(t)
	c := startCluster(t)
	c.create("a", "64MiB")
	c.create("b", "1GiB")
	want := map[string]int64{"a": 64 * MiB, "b": GiB}

	for _, uri := range []string{"nbd+unix:///?socket=" + c.Socket, "nbd://" + c.NBDAddr} {
		out := mustRun(t, time.Minute, "nbdinfo", "--list", "--json", uri)
		var l nbdinfoList
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			t.Fatalf("nbdinfo --list --json %s: %v in %q", uri, err, out)
		}
		got := map[string]int64{}
		for _, e := range l.Exports {
			got[e.Name] = e.Size
		}
		if !maps.Equal(got, want) {
			t.Errorf("nbdinfo --list %s: %v, want %v", uri, got, want)
		}
	}
	out := mustRun(t, time.Minute, "nbdinfo", "--size", c.TCPURI("a"))
	if got, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64); got != 64*MiB {
		t.Errorf("nbdinfo --size over TCP: %q, want %d", out, 64*MiB)
	}

	var total int64
	ex := nbdinfoMap(t, c.UnixURI("a"))
	for _, e := range ex {
		total += e.Length
		if e.Type&1 == 0 {
			t.Errorf("fresh thin vdisk: extent %+v is not a hole", e)
		}
	}
	if total != 64*MiB {
		t.Errorf("fresh vdisk: extents cover %d bytes, want %d: %+v", total, 64*MiB, ex)
	}

	s := openNBD(t, c.UnixURI("a"))
	s.mustWrite(MiB, 64*KiB, 0x5a)
	s.close()
	covered := int64(0)
	for _, e := range nbdinfoMap(t, c.UnixURI("a")) {
		lo, hi := max(e.Offset, MiB), min(e.Offset+e.Length, MiB+64*KiB)
		if lo >= hi {
			continue
		}
		covered += hi - lo
		if e.Type&3 != 0 {
			// A hole or zero flag over data makes sparse-aware copiers
			// (nbdcopy, qemu-img) skip it: data loss.
			t.Errorf("written range [1 MiB, +64 KiB): extent %+v claims hole/zero", e)
		}
	}
	if covered != 64*KiB {
		t.Errorf("map covers %d bytes of the written range, want %d", covered, 64*KiB)
	}
}

// TestQemuImgConvert copies an image with data and zero regions into a
// vdisk that held other data, and compares.
func TestQemuImgConvert(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	c := startCluster(t)
	c.create("conv", "64MiB")
	img := filepath.Join(t.TempDir(), "src.img")
	makeImage(t, img, 64*MiB, 1)

	uri := c.UnixURI("conv")
	// Fill it first, so that the zero regions must really be written.
	mustRun(t, 5*time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0xa5 0 64M", uri)
	mustRun(t, 5*time.Minute, "qemu-img", "convert", "-p", "-n", "-f", "raw", "-O", "raw", img, uri)
	for _, u := range []string{uri, c.TCPURI("conv")} {
		out, err := run(t, 5*time.Minute, "", "qemu-img", "compare", "-f", "raw", "-F", "raw", img, u)
		if err != nil {
			t.Errorf("qemu-img compare %s: %v\n%s", u, err, out)
		}
	}
	out := mustRun(t, time.Minute, "qemu-img", "info", "--output=json", uri)
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.VirtualSize != 64*MiB {
		t.Errorf("qemu-img info: virtual-size %d (%v), want %d", info.VirtualSize, err, 64*MiB)
	}
}

func fioArgs(uri string, extra ...string) []string {
	return append([]string{
		"--name=verify", "--ioengine=nbd", "--uri=" + uri,
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64m",
		"--verify=crc32c", "--verify_fatal=1",
	}, extra...)
}

func runFio(t *testing.T, args ...string) {
	t.Helper()
	out, err := run(t, 5*time.Minute, "", "fio", args...)
	if err != nil || !strings.Contains(out, "err= 0") {
		t.Fatalf("fio %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestFioVerify writes with fio and verifies in a separate pass, then again
// after a clean restart.
func TestFioVerify(t *testing.T) {
	needFio(t)
	c := startCluster(t)
	c.create("fio", "64MiB")
	uri := c.UnixURI("fio")
	runFio(t, fioArgs(uri, "--do_verify=0")...)
	runFio(t, fioArgs(uri, "--verify_only")...)

	c.stop()
	c.start()
	if got := c.info("fio").Size; got != 64*MiB {
		t.Errorf("size %d after restart, want %d", got, 64*MiB)
	}
	runFio(t, fioArgs(uri, "--verify_only")...)
}

// TestNbdcopyRoundTrip copies a file into a vdisk and back out.
func TestNbdcopyRoundTrip(t *testing.T) {
	needTools(t, "nbdcopy")
	c := startCluster(t)
	c.create("copy", "64MiB")
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
	data := makeImage(t, src, 64*MiB, 2)

	mustRun(t, 5*time.Minute, "nbdcopy", "--flush", src, c.UnixURI("copy"))
	for _, uri := range []string{c.UnixURI("copy"), c.TCPURI("copy")} {
		os.Remove(back)
		mustRun(t, 5*time.Minute, "nbdcopy", uri, back)
		got, err := os.ReadFile(back)
		if err != nil {
			t.Fatal(err)
		}
		if d := firstDiff(got, data); d >= 0 {
			t.Errorf("copied back from %s: differs at offset %d (got %d bytes)", uri, d, len(got))
		}
	}
}

// TestCrashConsistency kills ovs up with SIGKILL while fio and a libnbd
// writer keep it busy, restarts it, and checks that every write
// acknowledged before a completed flush is there. Twice, so that the
// second crash hits a vdisk that was itself recovered from a crash.
func TestCrashConsistency(t *testing.T) {
	needFio(t)
	py := needPython(t)
	c := startCluster(t)
	c.create("crash", "256MiB")

	// fio hammers [0, 128 MiB) over TCP; round r's writer owns
	// [128 MiB + r*16 MiB, +16 MiB) over the unix socket; the rest is
	// never written.
	rounds := []*crashWriter{
		{seed: 101, base: 128 * MiB, nblocks: 4096},
		{seed: 202, base: 144 * MiB, nblocks: 4096},
	}
	const zeroFrom = 160 * MiB
	checkAll := func(done []*crashWriter) {
		t.Helper()
		for _, w := range done {
			w.check(t, py, c.UnixURI("crash"))
		}
		s := openNBD(t, c.UnixURI("crash"))
		s.mustCheck(zeroFrom, 256*MiB-zeroFrom, 0) // never written
		if _, err := s.call("read 0 %d", 128*MiB); err != nil {
			t.Errorf("reading what fio wrote: %v", err)
		}
		s.close()
	}
	for i, w := range rounds {
		t.Logf("crash round %d", i+1)
		crashRound(t, c, py, w)
		c.start()
		if got := c.info("crash").Size; got != 256*MiB {
			t.Errorf("size %d after the crash, want %d", got, 256*MiB)
		}
		checkAll(rounds[:i+1])
		if t.Failed() {
			return
		}
	}
	// Recovery must be repeatable: stop cleanly and look again.
	c.stop()
	c.start()
	checkAll(rounds)
}

// crashWriter is one run of testdata/nbdio.py crash-write: 4 KiB writes to
// random blocks of [base, base+nblocks*4096), a flush every flushEvery.
type crashWriter struct {
	seed, base, nblocks int64
	flushed, issued     int64 // what it reported
}

const (
	crashFlushEvery = 32
	crashMinFlushes = 20
	crashMinRun     = 3 * time.Second
)

// crashRound runs fio and the writer against the running cluster and
// kills ovs up with SIGKILL once the writer has completed enough flushes.
func crashRound(t *testing.T, c *cluster, py string, w *crashWriter) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	fioOut := filepath.Join(t.TempDir(), "fio.out")
	fio := exec.CommandContext(ctx, "fio", "--name=hammer", "--ioengine=nbd",
		"--uri="+c.TCPURI("crash"), "--rw=randwrite", "--bs=4k", "--iodepth=16",
		"--offset=0", "--size=128m", "--fsync=16", "--time_based", "--runtime=600")
	fio.Dir = t.TempDir()
	fioLog, err := os.Create(fioOut)
	if err != nil {
		t.Fatal(err)
	}
	defer fioLog.Close()
	fio.Stdout, fio.Stderr = fioLog, fioLog
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	fioDone := make(chan struct{}) // closed once fio has been waited for
	var fioErr error
	go func() { fioErr = fio.Wait(); close(fioDone) }()
	defer func() {
		fio.Process.Kill()
		<-fioDone
	}()
	time.Sleep(time.Second)

	wr := exec.CommandContext(ctx, py, nbdioScript(t), "crash-write", c.UnixURI("crash"),
		fmt.Sprint(w.seed), fmt.Sprint(w.base), fmt.Sprint(w.nblocks), fmt.Sprint(crashFlushEvery))
	lines, wErr, stopWriter := streamLines(t, wr)
	defer stopWriter()
	w.flushed, w.issued = 0, -1
	flushes := 0
	parse := func(line string) {
		switch w.parse(line) {
		case "FLUSHED":
			flushes++
		case "ISSUED":
		default:
			t.Logf("writer: %s", line)
		}
	}
	start := time.Now()
	timeout := time.After(3 * time.Minute)
	for flushes < crashMinFlushes || time.Since(start) < crashMinRun {
		select {
		case line, ok := <-lines:
			if !ok {
				wr.Wait()
				t.Fatalf("writer ended early after %d flushes: %s", flushes, wErr.String())
			}
			parse(line)
		case <-fioDone:
			out, _ := os.ReadFile(fioOut)
			t.Fatalf("fio ended before the crash: %v\n%s", fioErr, out)
		case <-timeout:
			t.Fatalf("only %d flushes completed in 3 minutes", flushes)
		}
	}

	c.kill9()

	// The writer sees its connection fail and reports what it issued;
	// flushes acknowledged just before the kill are still in the pipe.
	wait := time.After(time.Minute)
drain:
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				break drain
			}
			parse(line)
		case <-wait:
			t.Fatalf("the writer did not stop within a minute of the crash")
		}
	}
	wr.Wait()
	if w.issued < w.flushed {
		t.Fatalf("writer did not report what it issued (flushed %d, issued %d): %s",
			w.flushed, w.issued, wErr.String())
	}
	select {
	case <-fioDone:
	case <-time.After(30 * time.Second):
		fio.Process.Kill()
		<-fioDone
	}
	if out, err := os.ReadFile(fioOut); err == nil {
		t.Logf("fio until the crash (%v):\n%s", fioErr, fioSummary(string(out)))
	}
	t.Logf("crash after %d flushes: writes 0..%d acknowledged before the last completed flush, %d issued",
		flushes, w.flushed-1, w.issued)
}

// parse takes in a line of the writer's report (FLUSHED n, ISSUED n,
// STOPPED why, ...) and returns its keyword.
func (w *crashWriter) parse(line string) string {
	f := strings.Fields(line)
	if len(f) == 0 {
		return ""
	}
	switch {
	case len(f) == 2 && f[0] == "FLUSHED":
		w.flushed, _ = strconv.ParseInt(f[1], 10, 64)
	case len(f) == 2 && f[0] == "ISSUED":
		w.issued, _ = strconv.ParseInt(f[1], 10, 64)
	}
	return f[0]
}

// check verifies the writer's region after a restart.
func (w *crashWriter) check(t *testing.T, py, uri string) {
	t.Helper()
	out, err := run(t, 5*time.Minute, "", py, nbdioScript(t), "crash-check", uri,
		fmt.Sprint(w.seed), fmt.Sprint(w.base), fmt.Sprint(w.nblocks),
		fmt.Sprint(w.flushed), fmt.Sprint(w.issued))
	if err != nil {
		t.Errorf("writes acknowledged before a flush are missing: %v\n%s", err, out)
		return
	}
	t.Logf("%s", strings.TrimSpace(out))
}

// fioSummary keeps the lines of fio's report that say what it did and how
// it ended.
func fioSummary(out string) string {
	var keep []string
	msgs := 0
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "fio:"):
			if msgs++; msgs > 3 {
				continue
			}
		case strings.Contains(l, "err="), strings.Contains(l, "issued rwts"), strings.Contains(l, "WRITE:"):
		default:
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// TestNewHost: synced data survives losing the host-local state
// (DIR/volumes) after a crash; the vdisks are rebuilt from the backend.
func TestNewHost(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "nbdcopy")
	c := startCluster(t)
	c.create("full", "64MiB")
	c.create("part", "64MiB")
	dir := t.TempDir()
	fullImg, partImg := filepath.Join(dir, "full.img"), filepath.Join(dir, "part.img")
	makeImage(t, fullImg, 64*MiB, 3)
	part := makeImage(t, partImg, 32*MiB, 4)

	mustRun(t, 5*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", fullImg, c.UnixURI("full"))
	mustRun(t, 5*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", partImg, c.UnixURI("part"))
	c.ovsOK("vdisk", "sync", "full")
	c.ovsOK("vdisk", "sync", "part")
	t.Logf("after sync: full has %d, part %d bytes pending upload",
		c.info("full").PendingUploadBytes, c.info("part").PendingUploadBytes)
	// More writes to part, flushed but not synced: they may or may not
	// survive the move.
	mustRun(t, 5*time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 32M 32M", c.UnixURI("part"))

	c.kill9()
	// DIR/volumes is the host-local state; the backend is DIR/ec (the
	// ASDs' fragments) with DIR/arakoon (its metadata), or DIR/backend
	// for the local-directory backend.
	for _, d := range []string{"volumes", "ec", "arakoon"} {
		if st, err := os.Stat(filepath.Join(c.Dir, d)); err != nil || !st.IsDir() {
			t.Fatalf("DIR/%s should exist: %v", d, err)
		}
	}
	if err := os.RemoveAll(filepath.Join(c.Dir, "volumes")); err != nil {
		t.Fatal(err)
	}
	c.start()

	if got, want := c.sizes(), map[string]int64{"full": 64 * MiB, "part": 64 * MiB}; !maps.Equal(got, want) {
		t.Fatalf("on the new host: %v, want %v", got, want)
	}
	if out, err := run(t, 5*time.Minute, "", "qemu-img", "compare", "-f", "raw", "-F", "raw",
		fullImg, c.UnixURI("full")); err != nil {
		t.Errorf("full after the move: %v\n%s", err, out)
	}
	back := filepath.Join(dir, "part.back")
	mustRun(t, 5*time.Minute, "nbdcopy", c.UnixURI("part"), back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != 64*MiB {
		t.Fatalf("part copied back: %d bytes, want %d", len(got), 64*MiB)
	}
	if d := firstDiff(got[:32*MiB], part); d >= 0 {
		t.Errorf("part after the move: synced data differs at offset %d", d)
	}
	// The unsynced half: each 4 KiB cluster is either the old (zero) or the
	// new (0x5a) content, never anything else.
	landed := 0
	zero, fill := make([]byte, 4096), bytes.Repeat([]byte{0x5a}, 4096)
	for off := 32 * MiB; off < 64*MiB; off += 4096 {
		blk := got[off : off+4096]
		switch {
		case bytes.Equal(blk, fill):
			landed++
		case !bytes.Equal(blk, zero):
			t.Fatalf("part after the move: unsynced cluster at %d is neither old nor new data", off)
		}
	}
	t.Logf("%d of %d unsynced clusters made it to the new host", landed, 32*MiB/4096)

	// The rebuilt vdisk takes writes.
	mustRun(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 1M", "-c", "read -P 0x77 0 1M", c.UnixURI("full"))
}

// TestResize grows a vdisk over the API: new connections see the new size,
// the data stays, the new space reads as zeros and takes writes.
func TestResize(t *testing.T) {
	needTools(t, "nbdinfo")
	needPython(t)
	c := startCluster(t)
	c.create("rs", "64MiB")
	uri := c.UnixURI("rs")

	s := openNBD(t, uri)
	s.mustWrite(63*MiB, MiB, 0x11)
	s.close()

	c.ovsOK("vdisk", "resize", "rs", "--size", "128MiB")
	if got := c.info("rs").Size; got != 128*MiB {
		t.Errorf("info: size %d after resize, want %d", got, 128*MiB)
	}
	if got := c.sizes()["rs"]; got != 128*MiB {
		t.Errorf("list: size %d after resize, want %d", got, 128*MiB)
	}
	out := mustRun(t, time.Minute, "nbdinfo", "--size", uri)
	if got, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64); got != 128*MiB {
		t.Errorf("nbdinfo --size after resize: %q, want %d", out, 128*MiB)
	}

	s = openNBD(t, uri)
	if s.size != 128*MiB {
		t.Errorf("new connection: size %d, want %d", s.size, 128*MiB)
	}
	s.mustCheck(63*MiB, MiB, 0x11)
	s.mustCheck(64*MiB, 64*MiB, 0)
	s.mustWrite(127*MiB, MiB, 0x22)
	s.mustCheck(127*MiB, MiB, 0x22)
	s.close()

	c.stop()
	c.start()
	if got := c.info("rs").Size; got != 128*MiB {
		t.Errorf("size %d after restart, want %d", got, 128*MiB)
	}
	s = openNBD(t, uri)
	s.mustCheck(63*MiB, MiB, 0x11)
	s.mustCheck(127*MiB, MiB, 0x22)
	s.close()
}
