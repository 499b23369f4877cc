package tests

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/secret"
	"github.com/ovs-storage/ovs/internal/freeport"
	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/ec"
)

// testSecret is a cluster secret the tests' own ASDs and clients share.
type testSecret struct {
	*secret.Secret
	path string
}

// newTestSecret makes (or reads) the secret in dir/secret.
func newTestSecret(t *testing.T, dir string) testSecret {
	t.Helper()
	s, err := secret.Ensure(dir)
	if err != nil {
		t.Fatal(err)
	}
	return testSecret{s, filepath.Join(dir, secret.FileName)}
}

// asdClient reaches ASDs with the cluster's credentials.
func (s testSecret) asdClient(t *testing.T) *http.Client {
	t.Helper()
	tc, err := s.ClientTLS(secret.RoleBackend, "test", secret.RoleASD)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: asd.NewTransport(tc)}
}

// foreignListener is another process's server on a port: it records what
// every connection sends it.
type foreignListener struct {
	ln    net.Listener
	mu    sync.Mutex
	conns [][]byte
	wg    sync.WaitGroup
}

func holdPort(t *testing.T, addr string) *foreignListener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("holding %s: %v", addr, err)
	}
	f := &foreignListener{ln: ln}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				// Answer as an ASD of old would, to whoever asks.
				c.SetDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(io.LimitReader(c, 64<<20))
				f.mu.Lock()
				f.conns = append(f.conns, b)
				f.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(f.close)
	return f
}

func (f *foreignListener) close() {
	f.ln.Close()
	f.wg.Wait()
}

// check fails if anything but TLS handshakes reached the listener: no
// HTTP request, nothing the size of a fragment.
func (f *foreignListener) check(t *testing.T) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, b := range f.conns {
		if len(b) == 0 {
			continue
		}
		if b[0] != 0x16 || len(b) > 4096 || bytes.Contains(b, []byte("PUT ")) || bytes.Contains(b, []byte("/v1/fragments")) {
			t.Errorf("connection %d to the foreign listener carried %d bytes starting %q: not just a TLS hello", i, len(b), b[:min(len(b), 32)])
		}
	}
	t.Logf("the foreign listener saw %d connections, all refused at the TLS handshake", len(f.conns))
}

// freeRange returns the first port of n consecutive ports that are free now
// (below the ephemeral range, so that the kernel does not hand them out).
func freeRange(t *testing.T, n int) int {
	t.Helper()
	base, err := freeport.Range(n)
	if err != nil {
		t.Fatal(err)
	}
	return base
}

func (c *cluster) asdStatuses() []ec.ASDStatus {
	c.t.Helper()
	var list []ec.ASDStatus
	out := c.ovsOK("backend", "--data", c.Dir, "asd", "list", "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		c.t.Fatalf("asd list: %v: %s", err, out)
	}
	return list
}

// writeAndSync writes a pattern through NBD, syncs it to the backend and
// reads it back.
func (c *cluster) writeAndSync(name string, b byte) {
	c.t.Helper()
	s := openNBD(c.t, c.UnixURI(name))
	s.mustWrite(0, 8<<20, b)
	s.close()
	c.ovsOK("vdisk", "sync", name)
	s = openNBD(c.t, c.UnixURI(name))
	s.mustCheck(0, 8<<20, b)
	s.close()
}

// TestASDPortTakenByAnotherProcess: ovs up starts and serves when another
// process holds an ASD's port, and that process never receives anything
// but a refused TLS handshake: first with one port of the range held
// before the cluster is made (5 of 6 ASDs run, 4+2 falls back to 4+1),
// then with a running ASD's port held across a restart (the ASD moves to a
// free port of the range and is registered there).
func TestASDPortTakenByAnotherProcess(t *testing.T) {
	c := newCluster(t, t.TempDir())
	base := freeRange(t, 7)
	held := holdPort(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(base+2)))
	c.Flags = []string{"--asd-ports", fmt.Sprintf("%d-%d", base, base+5)}
	c.start()
	up := 0
	for _, a := range c.asdStatuses() {
		if a.Health == "up" {
			up++
		}
		if a.Addr == held.ln.Addr().String() {
			t.Errorf("ASD %s registered at the held port %s", a.ID, a.Addr)
		}
	}
	if up != 5 {
		t.Fatalf("%d ASDs up with 6 ports of which one is held, want 5", up)
	}
	c.create("v1", "64MiB")
	c.writeAndSync("v1", 0x5a)
	// The registry is in the embedded arakoon: read it while ovs up runs.
	before := c.asdStatuses()
	victim := before[0]
	c.stop()
	held.close()
	held.check(t)

	// Phase 2: hold a running ASD's port, restart with one more port.
	foreign := holdPort(t, victim.Addr)
	c.Flags = []string{"--asd-ports", fmt.Sprintf("%d-%d", base, base+6)}
	c.start()
	after := c.asdStatuses()
	up = 0
	moved := false
	for _, a := range after {
		if a.Health == "up" {
			up++
		}
		if a.ID == victim.ID {
			_, ps, _ := net.SplitHostPort(a.Addr)
			port, _ := strconv.Atoi(ps)
			moved = a.Addr != victim.Addr && port >= base && port <= base+6 && a.Health == "up"
			t.Logf("ASD %s moved from %s to %s (%s)", a.ID, victim.Addr, a.Addr, a.Health)
		}
	}
	if !moved || up != 6 {
		t.Fatalf("after the restart: %d ASDs up, victim moved=%v: %+v", up, moved, after)
	}
	c.writeAndSync("v1", 0xa5)
	c.create("v2", "64MiB")
	c.writeAndSync("v2", 0x33)
	if !strings.Contains(c.logTail(1<<20), "ASD moved to a new port") {
		t.Error("the move is not logged")
	}
	foreign.check(t)
}

// TestInternalServicesRefuseWithoutCredentials: the ASDs, the embedded
// arakoon and the backend admin API refuse whoever does not hold the
// cluster secret (plain curl, the real binary with another secret or none,
// a raw arakoon frame), and nothing changes; add-node of a node that does
// not answer is refused and the cluster restarts. Then every file under
// DATA is private (find DATA -perm /077 finds nothing).
func TestInternalServicesRefuseWithoutCredentials(t *testing.T) {
	needTools(t, "curl")
	c := startCluster(t)
	c.create("v1", "64MiB")
	c.writeAndSync("v1", 0x42)

	// An ASD holding a fragment.
	// (The ASDs' fragment counts are refreshed in the background.)
	var asdDir, asdAddr, key string
	waitFor(t, 30*time.Second, "an ASD to report a fragment", func() bool {
		for _, a := range c.asdStatuses() {
			dir := filepath.Join(c.Dir, "ec", "asds")
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				id, _, _, err := asd.ReadIdentity(filepath.Join(dir, e.Name()))
				if err == nil && id == a.ID && a.Fragments > 0 {
					asdDir, asdAddr = filepath.Join(dir, e.Name()), a.Addr
				}
			}
		}
		return asdDir != ""
	})
	filepath.WalkDir(filepath.Join(asdDir, "fragments"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && key == "" {
			key = d.Name()
		}
		return nil
	})
	fragPath := asd.FragmentPath(asdDir, key)
	orig, err := os.ReadFile(fragPath)
	if err != nil {
		t.Fatal(err)
	}
	curl := func(args ...string) (string, error) {
		return run(t, 30*time.Second, "", "curl", append([]string{"-sS", "--max-time", "10"}, args...)...)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string // in curl's output when it got an answer
	}{
		{"plain PUT", []string{"-X", "PUT", "--data-binary", "evil", "-H", "X-Ovs-Crc32c: 00000000", "http://" + asdAddr + "/v1/fragments/" + key}, "HTTPS server"},
		// Go's TLS server names the mistake only for the methods it
		// recognizes in a TLS record header (not DELETE): an empty reply.
		{"plain DELETE", []string{"-X", "DELETE", "http://" + asdAddr + "/v1/fragments/" + key}, ""},
		{"plain GET", []string{"http://" + asdAddr + "/v1/fragments/" + key}, "HTTPS server"},
		{"TLS PUT without a certificate", []string{"-k", "-X", "PUT", "--data-binary", "evil", "-H", "X-Ovs-Crc32c: 00000000", "https://" + asdAddr + "/v1/fragments/" + key}, ""},
		{"TLS DELETE without a certificate", []string{"-k", "-X", "DELETE", "https://" + asdAddr + "/v1/fragments/" + key}, ""},
		{"TLS GET without a certificate", []string{"-k", "https://" + asdAddr + "/v1/fragments/" + key}, ""},
	} {
		out, err := curl(tc.args...)
		switch {
		case tc.want != "" && !strings.Contains(out, tc.want):
			t.Errorf("ASD %s: %q %v, want a refusal saying %q", tc.name, out, err, tc.want)
		case tc.want == "" && err == nil:
			t.Errorf("ASD %s: %q, want the connection refused", tc.name, out)
		}
		if now, err := os.ReadFile(fragPath); err != nil || !bytes.Equal(now, orig) {
			t.Fatalf("after the refused %s the fragment changed: %v", tc.name, err)
		}
	}
	if !strings.Contains(readFile(t, filepath.Join(asdDir, "asd.log")), "TLS handshake error") {
		t.Error("the ASD does not log the refused handshakes")
	}

	// arakoon: another secret, no secret, a raw frame of the plain protocol.
	araCfg := filepath.Join(c.Dir, "arakoon", "cluster.yaml")
	other := filepath.Join(t.TempDir(), "other")
	if err := os.WriteFile(other, []byte(strings.Repeat("e", 64)), 0o600); err != nil {
		t.Fatal(err)
	}
	addNode := []string{"arakoon", "--config", araCfg, "--timeout", "10s", "add-node", "evil", "--client", "127.0.0.1:1", "--raft", "127.0.0.1:2"}
	expectCLIError(t, "add-node with another cluster's secret", runOVS(t, nil, append(addNode[:3:3], append([]string{"--secret-file", other}, addNode[3:]...)...)...),
		"unauthorized", "not a member of this cluster")
	bare := filepath.Join(t.TempDir(), "bare.yaml")
	cfgText := readFile(t, araCfg)
	var kept []string
	for _, l := range strings.Split(cfgText, "\n") {
		if !strings.HasPrefix(l, "secret_file:") {
			kept = append(kept, l)
		}
	}
	os.WriteFile(bare, []byte(strings.Join(kept, "\n")), 0o600)
	expectCLIError(t, "add-node without a secret", runOVS(t, []string{"OVS_SECRET=", "OVS_SECRET_FILE="},
		"arakoon", "--config", bare, "add-node", "evil", "--client", "127.0.0.1:1", "--raft", "127.0.0.1:2"), "no cluster secret")
	if st := rawArakoonAddNode(t, c.AraClient); st != 12 {
		t.Errorf("a raw add_node frame got status %d, want 12 (unauthorized)", st)
	}
	// With the credentials, add-node of a node that does not answer would
	// cost the 1-node cluster its quorum: refused.
	expectCLIError(t, "add-node of a node that does not answer", runOVS(t, nil, addNode...), "refusing to add node", "quorum")
	if out := c.ovsOK("arakoon", "--config", araCfg, "members"); strings.Contains(out, "evil") {
		t.Fatalf("members after the refused add-nodes:\n%s", out)
	}

	// The backend admin API: only under the REST API (it has no port of
	// its own), behind the cluster's admin token.
	if _, err := os.Stat(filepath.Join(c.Dir, "ec", "admin.addr")); err == nil {
		t.Errorf("DATA/ec/admin.addr exists: the admin API should have no port of its own")
	}
	for _, m := range []string{"GET", "POST"} {
		out, _ := curl("-X", m, "-H", "Content-Type: application/json", "-d", `{"addr":"127.0.0.1:1"}`, "-w", "\n%{http_code}", c.APIURL()+"/api/v1/backend/asds")
		if !strings.HasSuffix(out, "401") || !strings.Contains(out, "admin token") {
			t.Errorf("%s /api/v1/backend/asds without the token: %q", m, out)
		}
	}
	tok := strings.TrimSpace(c.ovsOK("backend", "--data", c.Dir, "token"))
	if out, _ := curl("-H", "Authorization: Bearer "+tok, "-w", "\n%{http_code}", c.APIURL()+"/api/v1/backend/asds"); !strings.HasSuffix(out, "200") {
		t.Errorf("GET /api/v1/backend/asds with the token: %q", out)
	}
	if n := len(c.asdStatuses()); n != 6 {
		t.Errorf("%d ASDs registered after the refused calls, want 6", n)
	}

	// The cluster restarts (quorum intact) and serves what it had.
	c.stop()
	c.start()
	s := openNBD(t, c.UnixURI("v1"))
	s.mustCheck(0, 8<<20, 0x42)
	s.close()
	c.writeAndSync("v1", 0x43)
	c.stop()

	// Every file under DATA is its owner's alone.
	out, err := exec.Command("find", c.Dir, "-perm", "/077").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("find DATA -perm /077: %v\n%s", err, out)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// rawArakoonAddNode sends an add_node request in the plain client protocol
// (no TLS) and returns the status of the answer.
func rawArakoonAddNode(t *testing.T, addr string) byte {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	var payload []byte
	for _, s := range []string{"evil", "127.0.0.1:1", "127.0.0.1:2"} {
		payload = binary.AppendUvarint(payload, uint64(len(s)))
		payload = append(payload, s...)
	}
	payload = append(payload, 0) // voter
	frame := []byte{1, 32}       // version 1, add_node
	frame = binary.BigEndian.AppendUint64(frame, 7)
	frame = binary.BigEndian.AppendUint32(frame, uint32(len(payload)))
	frame = append(frame, payload...)
	if _, err := nc.Write(frame); err != nil {
		t.Fatal(err)
	}
	var h [14]byte
	if _, err := io.ReadFull(bufio.NewReader(nc), h[:]); err != nil {
		t.Fatalf("no answer to a raw add_node: %v", err)
	}
	return h[1]
}
