package nfs

import (
	"context"
	"log/slog"
	"strconv"
)

// ONC RPC (RFC 5531) constants this server speaks.
const (
	rpcCall  = 0
	rpcReply = 1

	msgAccepted = 0
	msgDenied   = 1

	acceptSuccess      = 0
	acceptProgUnavail  = 1
	acceptProgMismatch = 2
	acceptProcUnavail  = 3
	acceptGarbageArgs  = 4
	acceptSystemErr    = 5

	rejectRPCMismatch = 0
	rejectAuthError   = 1
	authBadCred       = 1 // AUTH_BADCRED
	authTooWeak       = 5 // AUTH_TOOWEAK

	authNone = 0
	authSys  = 1

	progPortmap = 100000
	progNFS     = 100003
	progMount   = 100005

	maxAuthBody = 400
)

// call is one decoded RPC call header; args holds the procedure's
// arguments.
type call struct {
	xid   uint32
	prog  uint32
	vers  uint32
	proc  uint32
	local int // the server port the call came in on (for the portmapper)
	args  *xdrReader
}

// handleRecord answers one RPC record. It returns nil when the record is
// not a call this server can even address a reply to (no xid, or a reply
// message); everything else, however malformed, gets an RPC-level error.
func (s *Server) handleRecord(ctx context.Context, rec []byte, local int) []byte {
	r := &xdrReader{b: rec}
	xid := r.u32()
	mtype := r.u32()
	if r.err != nil || mtype != rpcCall {
		return nil
	}
	rpcvers := r.u32()
	c := call{xid: xid, local: local, args: r}
	c.prog, c.vers, c.proc = r.u32(), r.u32(), r.u32()
	credFlavor := r.u32()
	r.opaque(maxAuthBody) // AUTH_SYS body: uid/gid are not used (no squash)
	r.u32()               // verifier flavor
	r.opaque(maxAuthBody)
	if r.err != nil {
		return acceptedReply(xid, acceptGarbageArgs)
	}
	if rpcvers != 2 {
		w := replyHeader(xid)
		w.u32(msgDenied)
		w.u32(rejectRPCMismatch)
		w.u32(2)
		w.u32(2)
		return w.b
	}
	if credFlavor != authNone && credFlavor != authSys {
		w := replyHeader(xid)
		w.u32(msgDenied)
		w.u32(rejectAuthError)
		w.u32(authTooWeak)
		return w.b
	}
	if credFlavor == authNone && c.prog != progPortmap && c.proc != 0 {
		// NFS needs an identity to speak of; AUTH_NONE is fine for NULL
		// and the portmapper only.
		w := replyHeader(xid)
		w.u32(msgDenied)
		w.u32(rejectAuthError)
		w.u32(authTooWeak)
		return w.b
	}

	var (
		body []byte
		stat uint32
	)
	switch c.prog {
	case progNFS:
		if c.vers != 3 {
			return mismatchReply(xid, 3, 3)
		}
		body, stat = s.nfsProc(ctx, &c)
	case progMount:
		if c.vers != 3 {
			return mismatchReply(xid, 3, 3)
		}
		body, stat = s.mountProc(ctx, &c)
	case progPortmap:
		if c.vers < 2 || c.vers > 4 {
			return mismatchReply(xid, 2, 4)
		}
		body, stat = s.portmapProc(&c)
	default:
		return acceptedReply(xid, acceptProgUnavail)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("nfs: call", "prog", c.prog, "vers", c.vers, "proc", c.proc, "accept", stat, "reply", len(body))
	}
	if stat != acceptSuccess {
		if stat == acceptGarbageArgs {
			s.log.Debug("nfs: garbage arguments", "prog", c.prog, "proc", c.proc)
		}
		return acceptedReply(xid, stat)
	}
	w := replyHeader(xid)
	w.u32(msgAccepted)
	w.u32(authNone)
	w.u32(0)
	w.u32(acceptSuccess)
	w.b = append(w.b, body...)
	return w.b
}

// replyHeader starts a reply: 4 bytes for the record mark, then xid and
// REPLY.
func replyHeader(xid uint32) *xdrWriter {
	w := &xdrWriter{b: make([]byte, 4, 128)}
	w.u32(xid)
	w.u32(rpcReply)
	return w
}

func acceptedReply(xid, stat uint32) []byte {
	w := replyHeader(xid)
	w.u32(msgAccepted)
	w.u32(authNone)
	w.u32(0)
	w.u32(stat)
	return w.b
}

func mismatchReply(xid, low, high uint32) []byte {
	w := replyHeader(xid)
	w.u32(msgAccepted)
	w.u32(authNone)
	w.u32(0)
	w.u32(acceptProgMismatch)
	w.u32(low)
	w.u32(high)
	return w.b
}

// portmapProc answers the portmapper (v2 GETPORT, v3/v4 GETADDR) for NFS
// and MOUNT with the port the query came in on: this server serves both
// there.
func (s *Server) portmapProc(c *call) ([]byte, uint32) {
	r := c.args
	w := &xdrWriter{}
	switch {
	case c.proc == 0:
		return nil, acceptSuccess
	case c.vers == 2 && c.proc == 3: // PMAPPROC_GETPORT
		prog, vers, prot := r.u32(), r.u32(), r.u32()
		r.u32()
		if r.err != nil {
			return nil, acceptGarbageArgs
		}
		port := uint32(0)
		if prot == 6 && s.serves(prog, vers) {
			port = uint32(c.local)
		}
		w.u32(port)
	case c.vers == 2 && c.proc == 4: // PMAPPROC_DUMP
		for _, p := range []uint32{progNFS, progMount} {
			w.bool(true)
			w.u32(p)
			w.u32(3)
			w.u32(6)
			w.u32(uint32(c.local))
		}
		w.bool(false)
	case c.vers >= 3 && c.proc == 3: // RPCBPROC_GETADDR
		prog, vers := r.u32(), r.u32()
		netid := r.string(64)
		r.string(128)
		r.string(128)
		if r.err != nil {
			return nil, acceptGarbageArgs
		}
		addr := ""
		if (netid == "tcp" || netid == "") && s.serves(prog, vers) {
			// A universal address; the host part is the client's to fill
			// in from the address it reached us on, as rpcbind's is.
			addr = universalAddr(c.local)
		}
		w.string(addr)
	default:
		return nil, acceptProcUnavail
	}
	return w.b, acceptSuccess
}

func (s *Server) serves(prog, vers uint32) bool {
	return (prog == progNFS || prog == progMount) && (vers == 3 || vers == 0)
}

func universalAddr(port int) string {
	return "0.0.0.0." + strconv.Itoa(port>>8) + "." + strconv.Itoa(port&0xff)
}
