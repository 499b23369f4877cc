package asd

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"
)

// Direct reads: the volume driver reads the fragments of the ASDs of its
// own host from their files, verified as the ASD verifies them, without a
// request to the ASD.
//
// Why: a cold 1 MiB sequential read on `ovs up` spent 29% of the machine's
// CPU in the six ASD processes and a tenth of the node's in reading their
// replies (perf, machine-wide): each byte was copied from the page cache
// into the ASD, into the socket, out of it into the node; each read woke an
// ASD process and its runtime. Here a read is one stat and one pread into
// the caller's buffer. HDFS's short-circuit local reads are the same idea.
//
// Who may: the process that may connect to the local socket (the ASD's own
// user or root, see localsock.go) may read the fragment files anyway; the
// directory must hold the identity of the ASD meant (checked again every
// identityRecheck). What stays the ASD's: every write, delete and listing,
// and any read these cannot serve (a file that cannot be opened, a range
// past its end is answered as the ASD would). Checks are the ASD's own
// code (openFragment, appendVerified): the header, the file's length, the
// key it holds, the CRC-32C of every block read (of the whole data for a
// whole fragment). A corrupt fragment is reported as ErrFragmentCorrupt,
// as the ASD reports it, so the backend decodes from the others and
// repairs it.
//
// A direct read runs in the caller's goroutine and cannot be abandoned: a
// disk that hangs hangs it, where a read over the socket is hedged. So a
// read slower than slowDirectRead turns direct reads of that ASD off for
// a while; its reads then go to the ASD again, hedged.
type localReader struct {
	files *fragCache // the ASD's, opened by this process
	log   *slog.Logger
	retry time.Duration
	// checkedAt: when the directory last held the identity of the ASD
	// meant (unix nanoseconds); offUntil: direct reads are off until then.
	checkedAt, offUntil atomic.Int64
	reads               atomic.Int64
}

const (
	// localFragFiles: fragment files a node keeps open per local ASD.
	localFragFiles  = 256
	identityRecheck = 10 * time.Second
	// slowDirectRead: a page-cache read of 4 MiB takes about a
	// millisecond, a disk's 1 MiB a few tens.
	slowDirectRead = 200 * time.Millisecond
)

// newLocalReader reads the fragments of the ASD id that serves socket, or
// returns nil when there is none to read.
func newLocalReader(socket, id string, retry time.Duration, log *slog.Logger) *localReader {
	if socket == "" || id == "" {
		return nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &localReader{files: newFragCache(filepath.Dir(socket), id, localFragFiles), log: log, retry: retry}
}

// usable reports whether direct reads are on and the directory is (still)
// the ASD's.
func (l *localReader) usable() bool {
	if l == nil {
		return false
	}
	now := time.Now().UnixNano()
	if now < l.offUntil.Load() {
		return false
	}
	if now-l.checkedAt.Load() < int64(identityRecheck) {
		return true
	}
	id, _, _, err := ReadIdentity(l.files.dir)
	if err != nil || id != l.files.id {
		l.turnOff("the directory does not hold the identity of the ASD", "found", id, "err", err)
		return false
	}
	l.checkedAt.Store(now)
	return true
}

func (l *localReader) turnOff(why string, args ...any) {
	l.offUntil.Store(time.Now().Add(l.retry).UnixNano())
	l.files.closeAll()
	l.log.Warn("direct reads of a local ASD off for a while: "+why,
		append([]any{"asd", l.files.id, "dir", l.files.dir, "for", l.retry}, args...)...)
}

// read reads items into dst from the files, as the ASD would, and reports
// false (having written nothing it vouches for) when the ASD should be
// asked instead.
func (l *localReader) read(items []ReadItem, dst [][]byte) ([]ItemResult, bool) {
	start := time.Now()
	res := make([]ItemResult, len(items))
	for i, it := range items {
		r, ok := l.readItem(it, dst[i])
		if !ok {
			return nil, false
		}
		res[i] = r
	}
	if d := time.Since(start); d > slowDirectRead {
		l.turnOff("a read was slow", "took", d)
	}
	l.reads.Add(1)
	return res, true
}

func (l *localReader) readItem(it ReadItem, dst []byte) (ItemResult, bool) {
	of, err := l.files.acquire(it.Key)
	if err != nil {
		if errors.Is(err, ErrFragmentNotFound) || errors.Is(err, ErrFragmentCorrupt) {
			return l.failed(it.Key, ItemResult{}, err), true
		}
		// Permissions, a format this build does not read, an I/O
		// error: the ASD answers for its files.
		l.turnOff("a fragment could not be opened", "key", it.Key, "err", err)
		return ItemResult{}, false
	}
	defer of.release()
	h := of.h
	res := ItemResult{CRC: h.DataCRC, Size: h.DataLen}
	if it.Off > h.DataLen || it.Length > h.DataLen-it.Off {
		return l.failed(it.Key, res, fmt.Errorf("asd %s: [%d,+%d) of %d bytes: %w", l.files.id, it.Off, it.Length, h.DataLen, errBadRange)), true
	}
	// dst[:0:len] : a bigger block-aligned range must not spill into what
	// follows dst in the caller's buffer.
	got, err := appendVerified(dst[:0:len(dst)], of.f, h, it.Off, it.Length)
	if err != nil {
		if errors.Is(err, ErrFragmentCorrupt) {
			l.files.forget(it.Key)
			return l.failed(it.Key, res, fmt.Errorf("asd %s: %w", l.files.id, err)), true
		}
		l.turnOff("a fragment could not be read", "key", it.Key, "err", err)
		return ItemResult{}, false
	}
	if len(got) > 0 && &got[0] != &dst[0] {
		copy(dst, got) // the range did not start on a block: read into a bigger buffer
	}
	return res, true
}

// failed is res with the error err, as the ASD answers it (and logs a
// corrupt fragment, as the ASD does).
func (l *localReader) failed(key string, res ItemResult, err error) ItemResult {
	if errors.Is(err, ErrFragmentCorrupt) {
		l.log.Warn("corrupt fragment (direct read)", "asd", l.files.id, "key", key, "err", err)
	}
	res.Err = fmt.Errorf("get fragment %s: %w", key, err)
	return res
}

func (l *localReader) close() {
	if l != nil {
		l.files.closeAll()
	}
}
