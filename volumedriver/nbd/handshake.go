package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

const (
	// maxOptData bounds the option payloads we read into memory; larger
	// known options are skipped and refused with NBD_REP_ERR_TOO_BIG.
	// NBD_OPT_GO with a maximal name and 65535 info requests fits.
	maxOptData = 256 << 10
	// maxOptions bounds the options of one negotiation.
	maxOptions = 4096
)

// handshake runs the fixed-newstyle negotiation. It returns nil with c.dev
// set when transmission begins, nil with c.dev unset when the client
// aborted, and an error when the connection must be closed.
func (c *conn) handshake() error {
	var b [18]byte
	binary.BigEndian.PutUint64(b[0:], nbdMagic)
	binary.BigEndian.PutUint64(b[8:], optMagic)
	binary.BigEndian.PutUint16(b[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.bw.Write(b[:]); err != nil {
		return fmt.Errorf("send greeting: %w", err)
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("send greeting: %w", err)
	}
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		return fmt.Errorf("read client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(b[:4])
	if cflags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return fmt.Errorf("unknown client flags 0x%08x", cflags)
	}
	c.fixed = cflags&flagCFixedNewstyle != 0
	c.noZeroes = cflags&flagCNoZeroes != 0

	var hb [optHdrSize]byte
	for range maxOptions {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			return fmt.Errorf("read option: %w", err)
		}
		h, err := parseOptHeader(hb[:])
		if err != nil {
			return err
		}
		if !c.fixed && h.opt != optExportName {
			return fmt.Errorf("option %d from a client without fixed newstyle", h.opt)
		}
		done, err := c.option(h)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
	return fmt.Errorf("more than %d options", maxOptions)
}

// option handles one option. done reports the end of negotiation.
func (c *conn) option(h optHeader) (done bool, err error) {
	switch h.opt {
	case optExportName:
		return c.optExportName(h)
	case optAbort:
		if err := c.discard(h.length); err != nil {
			return false, err
		}
		// The client may close without reading the ACK; ignore errors.
		_ = c.optReply(h.opt, repAck, nil)
		return true, nil
	case optList:
		return false, c.optList(h)
	case optStructuredReply:
		if h.length != 0 {
			return false, c.optFail(h, &optError{rep: repErrInvalid, msg: "NBD_OPT_STRUCTURED_REPLY takes no data"})
		}
		c.structured = true
		return false, c.optReply(h.opt, repAck, nil)
	case optInfo, optGo:
		return c.optInfoGo(h)
	case optListMetaContext, optSetMetaContext:
		return false, c.optMetaContext(h)
	default:
		return false, c.optFail(h, &optError{rep: repErrUnsup, msg: fmt.Sprintf("option %d is not supported", h.opt)})
	}
}

// discard skips n bytes of option data.
func (c *conn) discard(n uint32) error {
	if n == 0 {
		return nil
	}
	if _, err := c.br.Discard(int(n)); err != nil {
		return fmt.Errorf("skip option data: %w", err)
	}
	return nil
}

// optData reads the data of a known option. When it is too large it skips
// it, replies NBD_REP_ERR_TOO_BIG and returns nil data.
func (c *conn) optData(h optHeader) ([]byte, error) {
	if h.length > maxOptData {
		return nil, c.optFail(h, &optError{rep: repErrTooBig, msg: fmt.Sprintf("option data of %d bytes is too large", h.length)})
	}
	data := make([]byte, h.length)
	if _, err := io.ReadFull(c.br, data); err != nil {
		return nil, fmt.Errorf("read option %d data: %w", h.opt, err)
	}
	return data, nil
}

// optFail skips any unread option data and sends an error reply.
func (c *conn) optFail(h optHeader, oe *optError) error {
	if err := c.discard(h.length); err != nil {
		return err
	}
	return c.optErrReply(h.opt, oe)
}

func (c *conn) optErrReply(opt uint32, oe *optError) error {
	c.log.Debug("nbd: option refused", "option", opt, "reply", oe.rep&^(1<<31), "msg", oe.msg)
	msg := oe.msg
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	return c.optReply(opt, oe.rep, []byte(msg))
}

// optReply writes one option reply and flushes it.
func (c *conn) optReply(opt, typ uint32, data []byte) error {
	var b [20]byte
	binary.BigEndian.PutUint64(b[0:], optReplyMagic)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	c.bw.Write(b[:])
	c.bw.Write(data)
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("send option reply: %w", err)
	}
	return nil
}

func (c *conn) optList(h optHeader) error {
	if h.length != 0 {
		return c.optFail(h, &optError{rep: repErrInvalid, msg: "NBD_OPT_LIST takes no data"})
	}
	names, err := c.srv.exports.ListExports(c.ctx)
	if err != nil {
		c.log.Warn("nbd: listing exports failed", "err", err)
		return c.optErrReply(h.opt, c.exportErr("", err))
	}
	for _, n := range names {
		if checkName(n) != nil {
			continue
		}
		d := make([]byte, 4+len(n))
		binary.BigEndian.PutUint32(d, uint32(len(n)))
		copy(d[4:], n)
		if err := c.optReply(h.opt, repServer, d); err != nil {
			return err
		}
	}
	return c.optReply(h.opt, repAck, nil)
}

// exportErr turns an Exports failure into an option error reply.
func (c *conn) exportErr(name string, err error) *optError {
	switch {
	case errors.Is(err, ErrUnknownExport):
		return &optError{rep: repErrUnknown, msg: fmt.Sprintf("unknown export %q", name)}
	case c.srv.conns.Stopping() || c.ctx.Err() != nil:
		return &optError{rep: repErrShutdown, msg: "server is shutting down"}
	default:
		return &optError{rep: repErrPolicy, msg: fmt.Sprintf("export %q is not available: %v", name, err)}
	}
}

// resolveName maps the empty name onto the default export.
func (c *conn) resolveName(name string) (string, error) {
	if name != "" {
		return name, nil
	}
	if d := c.srv.opts.DefaultExport; d != "" {
		return d, nil
	}
	names, err := c.srv.exports.ListExports(c.ctx)
	if err != nil {
		return "", fmt.Errorf("resolve default export: %w", err)
	}
	if len(names) == 1 {
		return names[0], nil
	}
	return "", fmt.Errorf("%w: no default export among %d exports; name one", ErrUnknownExport, len(names))
}

// openExport resolves and opens an export; on success the caller owns
// release.
func (c *conn) openExport(name string) (dev Device, release func(), resolved string, err error) {
	resolved, err = c.resolveName(name)
	if err != nil {
		return nil, nil, "", err
	}
	dev, release, err = c.srv.exports.OpenExport(c.ctx, resolved)
	if err != nil {
		return nil, nil, resolved, fmt.Errorf("open export %q: %w", resolved, err)
	}
	if release == nil {
		release = func() {}
	}
	if dev == nil {
		release()
		return nil, nil, resolved, fmt.Errorf("open export %q: no device", resolved)
	}
	if dev.Size() < 0 {
		release()
		return nil, nil, resolved, fmt.Errorf("open export %q: negative size %d", resolved, dev.Size())
	}
	return dev, release, resolved, nil
}

// transmissionFlags are the flags advertised for dev with the features
// negotiated so far.
func (c *conn) transmissionFlags(dev Device) (flags uint16, readOnly, fastZero bool) {
	flags = tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagCanMultiConn | tflagSendCache
	if ro, ok := dev.(ReadOnlyDevice); ok && ro.ReadOnly() {
		readOnly = true
		flags |= tflagReadOnly
	} else {
		flags |= tflagSendTrim | tflagSendWriteZeroes | tflagSendFastZero
		if fz, ok := dev.(FastZeroDevice); ok && fz.FastZero() {
			fastZero = true
		}
	}
	if c.structured {
		flags |= tflagSendDF
	}
	return flags, readOnly, fastZero
}

// enter records the export chosen for transmission.
func (c *conn) enter(name, resolved string, dev Device, release func(), flags uint16, readOnly, fastZero bool) {
	c.dev = dev
	c.release = release
	c.exportName = resolved
	c.fastZero = fastZero
	c.st = exportState{
		size:       uint64(dev.Size()),
		readOnly:   readOnly,
		structured: c.structured,
		metaAlloc:  c.structured && c.metaWasSet && c.metaAlloc && c.metaExport == name,
		maxPayload: uint32(c.srv.opts.MaxRequestSize),
	}
	c.log = c.log.With("export", resolved)
}

func (c *conn) optExportName(h optHeader) (bool, error) {
	if h.length > maxStringLen {
		return false, fmt.Errorf("NBD_OPT_EXPORT_NAME with a name of %d bytes", h.length)
	}
	data := make([]byte, h.length)
	if _, err := io.ReadFull(c.br, data); err != nil {
		return false, fmt.Errorf("read export name: %w", err)
	}
	name := string(data)
	if err := checkName(name); err != nil {
		return false, fmt.Errorf("NBD_OPT_EXPORT_NAME: %w", err)
	}
	// NBD_OPT_EXPORT_NAME cannot fail politely: errors close the connection.
	dev, release, resolved, err := c.openExport(name)
	if err != nil {
		return false, err
	}
	flags, ro, fz := c.transmissionFlags(dev)
	var b [8 + 2 + 124]byte
	binary.BigEndian.PutUint64(b[0:], uint64(dev.Size()))
	binary.BigEndian.PutUint16(b[8:], flags)
	n := len(b)
	if c.noZeroes {
		n = 10
	}
	c.bw.Write(b[:n])
	if err := c.bw.Flush(); err != nil {
		release()
		return false, fmt.Errorf("send export info: %w", err)
	}
	c.enter(name, resolved, dev, release, flags, ro, fz)
	return true, nil
}

func (c *conn) optInfoGo(h optHeader) (bool, error) {
	data, err := c.optData(h)
	if data == nil || err != nil {
		return false, err
	}
	req, err := parseInfoRequest(data)
	if err != nil {
		var oe *optError
		if errors.As(err, &oe) {
			return false, c.optErrReply(h.opt, oe)
		}
		return false, err
	}
	dev, release, resolved, err := c.openExport(req.name)
	if err != nil {
		c.log.Info("nbd: export refused", "name", req.name, "err", err)
		return false, c.optErrReply(h.opt, c.exportErr(req.name, err))
	}
	flags, ro, fz := c.transmissionFlags(dev)
	held := true
	defer func() {
		if held {
			release()
		}
	}()

	var info [14]byte
	binary.BigEndian.PutUint16(info[0:], infoExport)
	binary.BigEndian.PutUint64(info[2:], uint64(dev.Size()))
	binary.BigEndian.PutUint16(info[10:], flags)
	if err := c.optReply(h.opt, repInfo, info[:12]); err != nil {
		return false, err
	}
	// Block size constraints are sent whether asked or not: they are the
	// protocol defaults except for the maximum payload, which a client
	// that does not understand them must honour anyway.
	binary.BigEndian.PutUint16(info[0:], infoBlockSize)
	binary.BigEndian.PutUint32(info[2:], 1)
	binary.BigEndian.PutUint32(info[6:], 4096)
	binary.BigEndian.PutUint32(info[10:], uint32(c.srv.opts.MaxRequestSize))
	if err := c.optReply(h.opt, repInfo, info[:14]); err != nil {
		return false, err
	}
	for _, it := range req.infos {
		if it == infoName {
			d := make([]byte, 2+len(resolved))
			binary.BigEndian.PutUint16(d, infoName)
			copy(d[2:], resolved)
			if err := c.optReply(h.opt, repInfo, d); err != nil {
				return false, err
			}
			break
		}
	}
	if h.opt == optInfo {
		// INFO holds the export only while answering: it is released
		// before the final ACK so that a client that has seen the ACK
		// sees the export released too.
		held = false
		release()
		return false, c.optReply(h.opt, repAck, nil)
	}
	if err := c.optReply(h.opt, repAck, nil); err != nil {
		return false, err
	}
	held = false
	c.enter(req.name, resolved, dev, release, flags, ro, fz)
	return true, nil
}

func (c *conn) optMetaContext(h optHeader) error {
	list := h.opt == optListMetaContext
	if !list {
		// Whatever happens, the previous selection is replaced.
		c.metaWasSet = false
		c.metaAlloc = false
	}
	data, err := c.optData(h)
	if data == nil || err != nil {
		return err
	}
	if !list && !c.structured {
		return c.optErrReply(h.opt, &optError{rep: repErrInvalid, msg: "NBD_OPT_SET_META_CONTEXT needs structured replies"})
	}
	req, err := parseMetaRequest(data)
	var alloc bool
	if err == nil {
		alloc, err = matchMeta(req.queries, list)
	}
	if err != nil {
		var oe *optError
		if errors.As(err, &oe) {
			return c.optErrReply(h.opt, oe)
		}
		return err
	}
	if alloc {
		id := uint32(0) // LIST: reserved, SHOULD be zero
		if !list {
			id = metaAllocationID
		}
		d := binary.BigEndian.AppendUint32(nil, id)
		d = append(d, metaAllocation...)
		if err := c.optReply(h.opt, repMetaContext, d); err != nil {
			return err
		}
	}
	if !list {
		c.metaWasSet = true
		c.metaAlloc = alloc
		c.metaExport = req.name
	}
	c.log.Debug("nbd: meta context", "list", list, "export", req.name, "queries", strings.Join(req.queries, ","), "base_allocation", alloc)
	return c.optReply(h.opt, repAck, nil)
}
