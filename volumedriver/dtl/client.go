package dtl

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// dialTimeout bounds a Shipper's dial, TLS handshake and hello.
const dialTimeout = 5 * time.Second

// dial connects to a DTL server, exchanges hellos, sends first (a frame)
// and returns the connection with a reader over it. ctx bounds all of it.
func dial(ctx context.Context, addr string, tc *tls.Config, first []byte) (net.Conn, *bufio.Reader, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: dial %s: %w", ErrBroken, addr, err)
	}
	fail := func(err error) (net.Conn, *bufio.Reader, error) {
		nc.Close()
		return nil, nil, err
	}
	// The deadline covers the handshake and hello; ctx ending closes
	// the connection, which a deadline alone would not notice.
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if tc != nil {
		if tc.ServerName == "" && !tc.InsecureSkipVerify {
			tc = tc.Clone()
			if host, _, err := net.SplitHostPort(addr); err == nil {
				tc.ServerName = host
			}
		}
		tlc := tls.Client(nc, tc)
		if err := tlc.HandshakeContext(ctx); err != nil {
			return fail(fmt.Errorf("%w: TLS handshake with %s: %w", ErrBroken, addr, err))
		}
		nc = tlc
	}
	b := appendHello(make([]byte, 0, helloSize+len(first)), Version, 0)
	if _, err := nc.Write(append(b, first...)); err != nil {
		return fail(fmt.Errorf("%w: hello to %s: %w", ErrBroken, addr, ctxErr(ctx, err)))
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	var hb [helloSize]byte
	if _, err := io.ReadFull(br, hb[:]); err != nil {
		return fail(fmt.Errorf("%w: hello from %s: %w", ErrBroken, addr, ctxErr(ctx, err)))
	}
	v, st, err := decodeHello(hb[:])
	switch {
	case err != nil:
		return fail(fmt.Errorf("%w: hello from %s: %w", ErrBroken, addr, err))
	case v != Version || st == helloBadVersion:
		return fail(fmt.Errorf("%w: %w: %s speaks DTL protocol version %d, this client %d", ErrBroken, ErrVersion, addr, v, Version))
	case st == helloTooManyConn:
		return fail(fmt.Errorf("%w: %s is at its connection limit", ErrBroken, addr))
	case st != helloOK:
		return fail(fmt.Errorf("%w: %s refused the hello with status %d", ErrBroken, addr, st))
	}
	if ctx.Err() != nil {
		return fail(fmt.Errorf("%w: %s: %w", ErrBroken, addr, ctx.Err()))
	}
	nc.SetDeadline(time.Time{})
	return nc, br, nil
}

// ctxErr prefers ctx's error to the deadline error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// readServerFrame reads one frame from a server into *buf (grown up to the
// frame type's limit); the body is valid until the next call.
func readServerFrame(br *bufio.Reader, buf *[]byte) (frameType, []byte, error) {
	var hb [frameHdrSize]byte
	if _, err := io.ReadFull(br, hb[:]); err != nil {
		return 0, nil, err
	}
	h, err := decodeFrameHdr(hb[:], serverFrame)
	if err != nil {
		return 0, nil, err
	}
	if cap(*buf) < h.length {
		*buf = make([]byte, h.length)
	}
	body := (*buf)[:h.length]
	if _, err := io.ReadFull(br, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return h.typ, body, nil
}

// admin runs one admin request on its own connection: it sends req, hands
// every frame before the result to each, and returns the result's error.
func admin(ctx context.Context, addr string, tc *tls.Config, t frameType, req vdiskReq, each func(frameType, []byte) error) error {
	if err := validVDisk(req.vdisk); err != nil {
		return fmt.Errorf("dtl %s: %w", t, err)
	}
	if err := validGroup(req.from, true); err != nil {
		return fmt.Errorf("dtl %s: %w", t, err)
	}
	nc, br, err := dial(ctx, addr, tc, appendVDiskReq(nil, t, req))
	if err != nil {
		return fmt.Errorf("dtl %s %s: %w", t, req.vdisk, err)
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var buf []byte
	for {
		ft, body, err := readServerFrame(br, &buf)
		if err != nil {
			return fmt.Errorf("dtl %s %s on %s: %w: %w", t, req.vdisk, addr, ErrBroken, ctxErr(ctx, err))
		}
		if ft == ftResult {
			st, msg, err := decodeResult(body)
			if err != nil {
				return fmt.Errorf("dtl %s %s on %s: %w: %w", t, req.vdisk, addr, ErrBroken, err)
			}
			if st != statusOK {
				return &resultError{op: t.String() + " " + req.vdisk, status: st, msg: msg}
			}
			return nil
		}
		if each == nil {
			return fmt.Errorf("dtl %s %s on %s: %w: %w: unexpected %s frame", t, req.vdisk, addr, ErrBroken, errProtocol, ft)
		}
		if err := each(ft, body); err != nil {
			return err
		}
	}
}

// Fence raises the vdisk's fence on the DTL server at addr to epoch,
// durably (it survives a restart of the server): from then on shipments of
// an older epoch are refused and a session of an older epoch ends Fenced.
// An epoch below the current fence gets an error wrapping ErrFenced.
func Fence(ctx context.Context, addr string, tc *tls.Config, vdisk string, epoch uint64) error {
	return admin(ctx, addr, tc, ftFence, vdiskReq{epoch: epoch, vdisk: vdisk}, nil)
}

// Groups lists the vdisk's groups in ship order (none for a vdisk the
// server does not know). epoch must not be below the fence.
func Groups(ctx context.Context, addr string, tc *tls.Config, vdisk string, epoch uint64) ([]GroupInfo, error) {
	var out []GroupInfo
	err := admin(ctx, addr, tc, ftGroups, vdiskReq{epoch: epoch, vdisk: vdisk}, func(t frameType, body []byte) error {
		if t != ftGroup {
			return fmt.Errorf("dtl groups %s on %s: %w: %w: unexpected %s frame", vdisk, addr, ErrBroken, errProtocol, t)
		}
		g, err := decodeGroupInfo(body)
		if err != nil {
			return fmt.Errorf("dtl groups %s on %s: %w: %w", vdisk, addr, ErrBroken, err)
		}
		out = append(out, g)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Read streams the entries of the vdisk's groups from group from
// (inclusive; "" = all) to the end, in ship order, calling fn for each with
// its group's name. Each entry is verified (every cluster's CRC) and owns
// its memory; the stream is read one entry at a time, so memory stays
// bounded whatever the groups hold. An error from fn stops the read and is
// returned as is. A from the server does not have gets an error wrapping
// ErrNotFound; an epoch below the fence one wrapping ErrFenced.
func Read(ctx context.Context, addr string, tc *tls.Config, vdisk string, epoch uint64, from string, fn func(group string, e Entry) error) error {
	cur := ""
	return admin(ctx, addr, tc, ftRead, vdiskReq{epoch: epoch, vdisk: vdisk, from: from}, func(t frameType, body []byte) error {
		bad := func(err error) error {
			return fmt.Errorf("dtl read %s on %s: %w: %w", vdisk, addr, ErrBroken, err)
		}
		switch t {
		case ftGroup:
			g, err := decodeGroupInfo(body)
			if err != nil {
				return bad(err)
			}
			cur = g.TLog
			return nil
		case ftWrite, ftTrim:
			if cur == "" {
				return bad(fmt.Errorf("%w: entry before its group", errProtocol))
			}
			k := Write
			if t == ftTrim {
				k = Trim
			}
			if _, err := verifyEntryBody(k, body, 0); err != nil {
				return bad(err)
			}
			return fn(cur, decodeEntry(k, body))
		}
		return bad(fmt.Errorf("%w: unexpected %s frame", errProtocol, t))
	})
}

// Forget removes everything the server holds for the vdisk, its fence
// included, and ends its shipping session. epoch must not be below the
// fence.
func Forget(ctx context.Context, addr string, tc *tls.Config, vdisk string, epoch uint64) error {
	return admin(ctx, addr, tc, ftForget, vdiskReq{epoch: epoch, vdisk: vdisk}, nil)
}
