package api

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// HTTPServer returns an http.Server for the API's handler with the
// server's limits: header and idle timeouts and a header size bound (the
// body limits and request deadlines are in the handler). Serve it on
// Listen(l) to cap the connections too.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.readHeaderTimeout,
		IdleTimeout:       s.idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
}

// Listener wraps l so that at most Options.MaxConns connections are open
// at once. A connection over the limit is answered at once with 503
// too_many_connections and closed, so the client learns why instead of
// hanging in the accept queue, and idle connections cannot exhaust the
// process's file descriptors.
func (s *Server) Listener(l net.Listener) net.Listener {
	return &limitListener{Listener: l, max: int64(s.maxConns), srv: s}
}

type limitListener struct {
	net.Listener
	max      int64
	active   atomic.Int64
	refusing atomic.Int64 // refusals being written
	srv      *Server

	logMu   sync.Mutex
	lastLog time.Time
	refused int
}

// maxRefusing bounds the goroutines answering refused connections; past
// it they are closed without an answer.
const maxRefusing = 64

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.active.Add(1) <= l.max {
			return &limitConn{Conn: c, l: l}, nil
		}
		l.active.Add(-1)
		l.refuse(c)
	}
}

func (l *limitListener) refuse(c net.Conn) {
	l.logMu.Lock()
	l.refused++
	if time.Since(l.lastLog) > 10*time.Second {
		l.srv.log.Warn("api: connection refused: at the connection limit", "limit", l.max, "refused", l.refused, "remote", c.RemoteAddr().String())
		l.lastLog, l.refused = time.Now(), 0
	}
	l.logMu.Unlock()
	if l.refusing.Add(1) > maxRefusing {
		l.refusing.Add(-1)
		c.Close()
		return
	}
	go func() {
		defer l.refusing.Add(-1)
		defer c.Close()
		body := fmt.Sprintf(`{"error":"too many connections to the API (the limit is %d); retry later","code":%q}`+"\n", l.max, CodeTooManyConnections)
		resp := "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n" +
			"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
		c.SetDeadline(time.Now().Add(time.Second))
		// Answer once the request has started to arrive: an HTTP client
		// takes a response on a connection it has not sent on yet as
		// "unsolicited" and drops it, and the refusal would not be seen.
		buf := make([]byte, 4096)
		if _, err := c.Read(buf); err != nil {
			return
		}
		if _, err := c.Write([]byte(resp)); err != nil {
			return
		}
		// Half-close and drain what the client sent, so that closing does
		// not reset the connection before it reads the answer.
		if tc, ok := c.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		}
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
}

type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.active.Add(-1) })
	return err
}
