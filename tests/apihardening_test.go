package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// asdPids lists the ASD processes ovs up supervises.
func (c *cluster) asdPids() []int {
	var out []int
	for _, p := range descendants(c.proc.Process.Pid) {
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/cmdline")
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 1 && args[1] == "asd" {
			out = append(out, p.pid)
		}
	}
	return out
}

// apiCall sends one request to the cluster's API and returns the status
// and body.
func (c *cluster) apiCall(method, path, contentType, body string, header map[string]string) (int, string) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.APIURL()+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestStalledBackendOtherVDisksAnswer: with every ASD stopped (SIGSTOP:
// they hang, as a wedged disk or network would), a set-template and a
// clone of an unsynced snapshot wait on the backend; list, info and
// create of other vdisks answer within a second or two meanwhile, the
// health check says the backend is unavailable and a create is 503, not
// 500.
func TestStalledBackendOtherVDisksAnswer(t *testing.T) {
	c := startCluster(t)
	c.create("other", "64MiB")
	c.create("busy", "64MiB")
	s := openNBD(t, c.UnixURI("busy"))
	s.mustWrite(0, 1<<20, 7)
	c.ovsOK("vdisk", "snapshot", "create", "busy", "s1")
	pids := c.asdPids()
	if len(pids) == 0 {
		t.Fatal("no ASD processes found under ovs up")
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGSTOP)
	}
	t.Cleanup(func() {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGCONT)
		}
	})
	s.mustWrite(1<<20, 1<<20, 8) // unsynced data the template needs uploaded
	type result struct {
		what string
		r    cliResult
	}
	slow := make(chan result, 2)
	go func() { slow <- result{"set-template", c.cli("vdisk", "set-template", "busy", "--timeout", "90s")} }()
	go func() {
		slow <- result{"clone", c.cli("vdisk", "clone", "busy-clone", "--from", "busy@s1", "--timeout", "90s")}
	}()
	waitFor(t, 30*time.Second, "health to report the stalled backend", func() bool {
		code, _ := c.apiCall("GET", "/api/v1/health", "", "", nil)
		return code == http.StatusServiceUnavailable
	})
	select {
	case r := <-slow:
		t.Fatalf("%s finished while the ASDs were stopped: %v; it should wait for the backend", r.what, r.r)
	default:
	}
	const bound = 2 * time.Second
	timed := func(what string, fn func()) {
		t.Helper()
		start := time.Now()
		fn()
		if d := time.Since(start); d > bound {
			t.Errorf("%s took %v with the ASDs stopped, want < %v", what, d, bound)
		}
	}
	timed("list", func() {
		if code, body := c.apiCall("GET", "/api/v1/vdisks", "", "", nil); code != 200 {
			t.Errorf("list: %d %s", code, body)
		}
	})
	timed("info", func() {
		if code, body := c.apiCall("GET", "/api/v1/vdisks/other", "", "", nil); code != 200 {
			t.Errorf("info: %d %s", code, body)
		}
	})
	timed("create", func() {
		code, body := c.apiCall("POST", "/api/v1/vdisks", "application/json", `{"name":"new","size":"64MiB"}`, nil)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "backend_unavailable") {
			t.Errorf("create with every ASD stopped: %d %s, want 503 backend_unavailable", code, body)
		}
	})
	timed("new NBD connection", func() {
		if out, err := run(t, 10*time.Second, "", "nbdinfo", "--size", c.UnixURI("other")); err != nil {
			t.Errorf("nbdinfo other: %v %s", err, out)
		}
	})
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGCONT)
	}
	for range 2 {
		r := <-slow
		if r.r.Code != 0 {
			t.Errorf("%s after the ASDs came back: %v", r.what, r.r)
		}
	}
	if info := c.info("busy-clone"); info.Name != "busy-clone" {
		t.Errorf("busy-clone: %+v", info)
	}
}

// TestCreateRightAfterReady: once the health check says ready, creating
// and writing a vdisk works, on a fresh ovs up and on restarts.
func TestCreateRightAfterReady(t *testing.T) {
	c := startCluster(t)
	for i := range 3 {
		if i > 0 {
			c.stop()
			c.start()
		}
		name := fmt.Sprintf("v%d", i)
		c.create(name, "16MiB") // right after waitReady saw 200
		s := openNBD(t, c.UnixURI(name))
		s.mustWrite(0, 4<<20, byte(i+1))
		c.ovsOK("vdisk", "sync", name)
		s.close()
	}
}

// TestConnectionLimits: idle connections beyond the caps are refused,
// while a connected NBD client keeps writing; a half-sent API body is
// closed by the server.
func TestConnectionLimits(t *testing.T) {
	c := startCluster(t, "--nbd-max-conns", "8", "--api-max-conns", "8", "--nbd-handshake-timeout", "60s")
	c.create("d", "64MiB")
	s := openNBD(t, c.TCPURI("d"))
	var idle []net.Conn
	defer func() {
		for _, x := range idle {
			x.Close()
		}
	}()
	dial := func(addr string) net.Conn {
		x, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, x)
		return x
	}
	for range 40 {
		dial(c.NBDAddr)
	}
	// The ones over the cap are closed at once.
	refused := 0
	for _, x := range idle {
		x.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var b [1]byte
		if _, err := x.Read(b[:]); err == io.EOF || err != nil && !os.IsTimeout(err) && !strings.Contains(err.Error(), "timeout") {
			refused++
		}
	}
	if refused < 40-8 {
		t.Errorf("NBD: %d of 40 idle connections refused with a cap of 8 (one taken), want at least 32", refused)
	}
	s.mustWrite(0, 4<<20, 9)
	s.mustCheck(0, 4<<20, 9)

	apiIdle := make([]net.Conn, 0, 20)
	for range 20 {
		apiIdle = append(apiIdle, dial(c.APIAddr))
	}
	_ = apiIdle
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(c.APIURL() + "/api/v1/vdisks")
	if err != nil {
		t.Fatalf("API over its cap: %v, want a 503 answer", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "too_many_connections") {
		t.Errorf("API over its cap: %s %s", resp.Status, b)
	}
	for _, x := range idle {
		x.Close()
	}
	idle = nil
	s.mustWrite(4<<20, 1<<20, 10)
	if st := c.info("d"); st.Name != "d" {
		t.Errorf("info after the flood: %+v", st)
	}
	var vs []map[string]any
	if err := json.Unmarshal([]byte(c.ovsOK("vdisk", "list", "-o", "json")), &vs); err != nil || len(vs) != 1 || vs[0]["state"] != "ok" {
		t.Errorf("vdisks after the flood: %v %v", vs, err)
	}

	// A body that never completes is cut off (after the 10 s body timeout).
	x := dial(c.APIAddr)
	fmt.Fprintf(x, "POST /api/v1/vdisks HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":", c.APIAddr)
	x.SetReadDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	r, err := http.ReadResponse(bufio.NewReader(x), nil)
	if err != nil {
		t.Fatalf("half-sent body: %v after %v, want a 408 and a close", err, time.Since(start))
	}
	if r.StatusCode != http.StatusRequestTimeout {
		t.Errorf("half-sent body: %s", r.Status)
	}
	t.Logf("half-sent body answered %s after %v", r.Status, time.Since(start).Round(time.Millisecond))
}

// TestBrowserRequestsRefused: the checks a web page would hit: a
// cross-origin text/plain POST, a rebound Host, the backend admin mount;
// and a token required with --api-require-token.
func TestBrowserRequestsRefused(t *testing.T) {
	c := startCluster(t, "--api-require-token")
	create := `{"name":"x","size":"16MiB"}`
	for _, tc := range []struct {
		name, method, path, ct, body string
		header                       map[string]string
		want                         int
	}{
		{"cross-origin text/plain", "POST", "/api/v1/vdisks", "text/plain", create, map[string]string{"Origin": "http://evil.example"}, 403},
		{"text/plain", "POST", "/api/v1/vdisks", "text/plain", create, nil, 415},
		{"rebound Host", "GET", "/api/v1/vdisks", "", "", map[string]string{"Host": "evil.example:8800"}, 403},
		{"admin mount cross-origin", "POST", "/api/v1/backend/asds", "text/plain", `{"addr":"127.0.0.1:1"}`, map[string]string{"Origin": "http://evil.example"}, 403},
		{"no token", "POST", "/api/v1/vdisks", "application/json", create, nil, 401},
		{"read without token", "GET", "/api/v1/vdisks", "", "", nil, 200},
	} {
		code, body := c.apiCall(tc.method, tc.path, tc.ct, tc.body, tc.header)
		if code != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, code, body, tc.want)
		}
	}
	if out, err := run(t, 10*time.Second, "", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
		"-H", "Origin: http://evil.example", "-H", "Content-Type: text/plain",
		"--data", create, c.APIURL()+"/api/v1/vdisks"); err != nil || strings.TrimSpace(out) != "403" {
		t.Errorf("curl cross-origin text/plain POST: %q %v, want 403", out, err)
	}
	// The CLI on this host reads the token ovs up made in DATA.
	c.ovsOK("vdisk", "create", "x", "--size", "16MiB", "--token-file", c.Dir+"/api-tokens")
	r := c.cli("vdisk", "create", "y", "--size", "16MiB", "--token-file", "/nonexistent")
	expectCLIError(t, "create without a token", r, "token")
	tok := strings.TrimSpace(string(runOK(t, ovsBin, "token", "create", "--data", c.Dir)))
	rr := runOVS(t, []string{"OVS_API=" + c.APIURL(), "OVS_TOKEN=" + tok}, "vdisk", "create", "y", "--size", "16MiB", "--token-file", "/nonexistent")
	if rr.Code != 0 {
		t.Errorf("create with OVS_TOKEN from ovs token create: %v", rr)
	}
}

func runOK(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := run(t, time.Minute, "", name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v %s", name, args, err, out)
	}
	return []byte(out)
}
