package nbd

import (
	"bytes"
	"testing"
	"time"
)

// TestMaxConns: connections over the cap are closed at once, a client
// already connected keeps working, and a slot that frees up is usable
// again.
func TestMaxConns(t *testing.T) {
	ts, _ := oneExport(t, Options{MaxConns: 3})
	c := dialClient(t, ts.addr)
	c.connect("disk", true, false)
	idle := []*testClient{dialClient(t, ts.addr), dialClient(t, ts.addr)}
	for _, ic := range idle {
		ic.greet(flagFixedNewstyle | flagNoZeroes) // holds its slot
	}
	over := dialClient(t, ts.addr)
	over.expectClosed()

	data := pattern(4096, 3)
	if r := c.do(cmdWrite, 0, 0, 4096, data); r.errno != 0 {
		t.Fatalf("write on the connected client at the cap: errno %d", r.errno)
	}
	if r := c.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("read back: errno %d", r.errno)
	}
	idle[0].nc.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		nc := dialClient(t, ts.addr)
		nc.nc.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := nc.br.Peek(1); err == nil {
			break // greeted: a slot was free
		}
		if time.Now().After(deadline) {
			t.Fatal("no slot freed after a client left")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHandshakeTimeoutIdleClient: a client that connects and sends nothing
// is closed after the handshake timeout, freeing its slot.
func TestHandshakeTimeoutIdleClient(t *testing.T) {
	ts, _ := oneExport(t, Options{HandshakeTimeout: 200 * time.Millisecond})
	c := dialClient(t, ts.addr)
	c.readFull(18) // the greeting; then silence
	c.expectClosed()
}
