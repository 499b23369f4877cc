package asd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/internal/crc32c"
	"github.com/ovs-storage/ovs/scos/internal/fsutil"
)

// An ASD (ALBA storage daemon) keeps erasure-coded fragments on one local
// disk and serves them over HTTP. It knows nothing of objects or policies:
// the backend decides what goes where. Every fragment file carries a
// checksummed header (see FragmentHeader); a put is acknowledged only once
// the file and its directory entry are fsynced; every read is verified and a
// fragment that fails its checksum is reported as corrupt, never served.
//
// HTTP API, version 1 (errors are JSON {"error": msg, "code": code} with
// 400 bad_request, 404 not_found, 416 bad_range, 422 corrupt, 507 full):
//
//	GET    /v1/health                        Health
//	GET    /v1/capacity                      Capacity
//	PUT    /v1/fragments/{key}               body = data; X-Ovs-Crc32c (hex, required), X-Ovs-Tag
//	GET    /v1/fragments/{key}[?offset=&length=]  data; X-Ovs-Size, X-Ovs-Crc32c of the whole fragment
//	GET    /v1/fragments/{key}/stat          FragmentInfo (header checked, data not read)
//	POST   /v1/fragments/{key}/verify        FragmentInfo after reading and checking all the data
//	DELETE /v1/fragments/{key}
//	GET    /v1/fragments?prefix=&after=&limit=&details=1   FragmentList
//
// With a TLS configuration (what `ovs asd serve` always runs with) the API
// is served over TLS only to clients that present a certificate endorsed
// by the cluster secret (see framework/secret): anyone else is refused
// before a request is read. A request with an X-Ovs-Asd header naming
// another ASD is refused (409 wrong_asd), so that a fragment meant for one
// ASD is never stored on another that took over its address.

// Config configures an ASD.
type Config struct {
	Dir  string // where the fragments live; created if missing
	Node string // failure domain: the host
	Site string // failure domain: the site (data centre)
	// FillLimit is the fraction of the disk (or of Capacity) past which
	// writes are refused; 0 means DefaultFillLimit.
	FillLimit float64
	// Capacity, if set, caps the bytes of fragments this ASD stores (for
	// several ASDs sharing a filesystem, and for tests); 0 is the size of
	// the filesystem.
	Capacity  int64
	BlockSize int // checksum block; 0 means DefaultFragmentBlockSize
	// Cluster, if set, is the id of the cluster the ASD serves. It is kept
	// in its identity file at the first start; an ASD of one cluster
	// refuses to start for another (a disk moved between clusters).
	Cluster string
	// TLS, if set, gives the server configuration the API is served
	// with, made for the ASD's id once it is known.
	TLS func(id string) (*tls.Config, error)
	// LocalSocket, if set, is a unix socket path on which the port's
	// protocols (binary reads and the HTTP API) are also served, to
	// clients of the ASD's own user on its host (see localsock.go). A
	// socket that cannot be made is logged and left out: local clients
	// then go over TLS.
	LocalSocket string
	Logger      *slog.Logger
}

// DefaultFillLimit: an ASD refuses writes past 99% of its disk.
const DefaultFillLimit = 0.99

const (
	// fragCacheSize: fragment files kept open for reads (a 4 MiB SCO
	// is one fragment per ASD; 1024 of them cover the SCOs of GiBs).
	fragCacheSize   = 1024
	asdIdentityFile = "asd.json"
	asdFragmentsDir = "fragments"
	asdFanout       = 256
	asdAPIVersion   = 1
)

// Health is what GET /v1/health answers.
type Health struct {
	ID         string   `json:"id"`
	Cluster    string   `json:"cluster,omitempty"`
	Node       string   `json:"node"`
	Site       string   `json:"site"`
	APIVersion int      `json:"api_version"`
	Fragments  int64    `json:"fragments"`
	Capacity   Capacity `json:"capacity"`
	Pid        int      `json:"pid"`
}

// Capacity is the space of an ASD. Used counts the bytes of its fragment
// files; Free is what it still accepts before the fill limit.
type Capacity struct {
	Capacity  int64   `json:"capacity"`
	Used      int64   `json:"used"`
	Free      int64   `json:"free"`
	FSTotal   int64   `json:"fs_total"`
	FSFree    int64   `json:"fs_free"`
	FSID      string  `json:"fs_id"` // ASDs on one node with the same id share a filesystem
	FillLimit float64 `json:"fill_limit"`
}

// FragmentInfo describes a stored fragment.
type FragmentInfo struct {
	Key     string `json:"key"`
	Size    int64  `json:"size"`
	CRC32C  uint32 `json:"crc32c"`
	Tag     string `json:"tag,omitempty"`
	Created int64  `json:"created,omitempty"` // Unix nanoseconds
	// FileSize is the size of the fragment file (header included).
	FileSize int64 `json:"file_size,omitempty"`
	// Corrupt is set in detailed listings for a file whose header does
	// not decode.
	Corrupt bool `json:"corrupt,omitempty"`
}

// FragmentList is the answer of GET /v1/fragments.
type FragmentList struct {
	Fragments []FragmentInfo `json:"fragments"`
	Truncated bool           `json:"truncated"`
}

type asdIdentity struct {
	Format  int    `json:"format"`
	ID      string `json:"id"`
	Cluster string `json:"cluster,omitempty"`
	Node    string `json:"node"`
	Site    string `json:"site"`
}

// Server is one storage daemon.
type Server struct {
	cfg   Config
	id    string
	log   *slog.Logger
	frags string
	tls   *tls.Config
	// fcache keeps fragment files open for reads (see fragCache).
	fcache *fragCache
	// bodies recycles the buffers of fragment puts.
	bodies bodyPool
	used   atomic.Int64 // bytes of fragment files
	count  atomic.Int64 // number of fragments
	locks  [64]sync.Mutex
	localStats
}

// Open opens (creating on first use) the ASD in cfg.Dir. Its identity
// (a random id, its node and site) is kept in DIR/asd.json; node and site
// follow the configuration if it changes. Leftovers of interrupted puts are
// removed.
func Open(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("asd: no directory")
	}
	if cfg.FillLimit == 0 {
		cfg.FillLimit = DefaultFillLimit
	}
	if cfg.FillLimit <= 0 || cfg.FillLimit > 1 {
		return nil, fmt.Errorf("asd: fill limit %v: want a fraction in (0, 1]", cfg.FillLimit)
	}
	if cfg.Capacity < 0 {
		return nil, fmt.Errorf("asd: negative capacity %d", cfg.Capacity)
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultFragmentBlockSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, frags: filepath.Join(cfg.Dir, asdFragmentsDir)}
	if err := os.MkdirAll(s.frags, 0o700); err != nil {
		return nil, fmt.Errorf("asd %s: %w", cfg.Dir, err)
	}
	// The fragments are the cluster's data: nobody else's to read, even
	// in a directory made by hand with a looser mode.
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		cfg.Logger.Warn("asd: cannot make its directory private", "dir", cfg.Dir, "err", err)
	}
	for i := range asdFanout {
		if err := os.MkdirAll(filepath.Join(s.frags, fmt.Sprintf("%02x", i)), 0o700); err != nil {
			return nil, fmt.Errorf("asd %s: %w", cfg.Dir, err)
		}
	}
	if err := fsutil.SyncDir(s.frags); err != nil {
		return nil, err
	}
	id, err := s.loadIdentity()
	if err != nil {
		return nil, err
	}
	s.id = id
	s.fcache = newFragCache(cfg.Dir, id, fragCacheSize)
	s.log = cfg.Logger.With("asd", id)
	if cfg.TLS != nil {
		if s.tls, err = cfg.TLS(id); err != nil {
			return nil, fmt.Errorf("asd %s: tls: %w", id, err)
		}
	}
	if err := s.scan(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) loadIdentity() (string, error) {
	path := filepath.Join(s.cfg.Dir, asdIdentityFile)
	var ident asdIdentity
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &ident); err != nil {
			return "", fmt.Errorf("asd identity %s: %w", path, err)
		}
		if ident.Format != 1 {
			return "", fmt.Errorf("asd identity %s: %w: format %d", path, scos.ErrUnsupportedFormat, ident.Format)
		}
		if !scos.ValidName(ident.ID) {
			return "", fmt.Errorf("asd identity %s: invalid id %q", path, ident.ID)
		}
		if ident.Cluster != "" && s.cfg.Cluster != "" && ident.Cluster != s.cfg.Cluster {
			return "", fmt.Errorf("asd %s in %s belongs to cluster %s, not to cluster %s (whose secret was given)",
				ident.ID, s.cfg.Dir, ident.Cluster, s.cfg.Cluster)
		}
		if ident.Node == s.cfg.Node && ident.Site == s.cfg.Site && (s.cfg.Cluster == "" || ident.Cluster == s.cfg.Cluster) {
			return ident.ID, nil
		}
	case errors.Is(err, fs.ErrNotExist):
		ident = asdIdentity{Format: 1, ID: newASDID()}
	default:
		return "", fmt.Errorf("asd identity: %w", err)
	}
	ident.Node, ident.Site = s.cfg.Node, s.cfg.Site
	if s.cfg.Cluster != "" {
		ident.Cluster = s.cfg.Cluster
	}
	out, _ := json.MarshalIndent(ident, "", "  ")
	tmp := path + fsutil.TmpPrefix + fsutil.RandomSuffix()
	if err := fsutil.WriteFileSync(tmp, append(out, '\n')); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("asd identity: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("asd identity: %w", err)
	}
	return ident.ID, fsutil.SyncDir(s.cfg.Dir)
}

func newASDID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "asd-" + hex.EncodeToString(b[:])
}

// ReadIdentity returns the id, node and site kept in an ASD directory.
func ReadIdentity(dir string) (id, node, site string, err error) {
	data, err := os.ReadFile(filepath.Join(dir, asdIdentityFile))
	if err != nil {
		return "", "", "", err
	}
	var ident asdIdentity
	if err := json.Unmarshal(data, &ident); err != nil {
		return "", "", "", fmt.Errorf("asd identity in %s: %w", dir, err)
	}
	return ident.ID, ident.Node, ident.Site, nil
}

// scan removes leftover temporary files and counts the fragments.
func (s *Server) scan() error {
	var used, count int64
	for i := range asdFanout {
		dir := filepath.Join(s.frags, fmt.Sprintf("%02x", i))
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("asd scan: %w", err)
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), fsutil.TmpPrefix) {
				os.Remove(filepath.Join(dir, e.Name()))
				continue
			}
			if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
				used += fi.Size()
				count++
			}
		}
	}
	s.used.Store(used)
	s.count.Store(count)
	return nil
}

// ID returns the ASD's identity.
func (s *Server) ID() string { return s.id }

// FragmentPath is where the ASD in dir keeps the fragment key.
func FragmentPath(dir, key string) string {
	h := fnv.New32a()
	h.Write([]byte(key))
	return filepath.Join(dir, asdFragmentsDir, fmt.Sprintf("%02x", h.Sum32()%asdFanout), key)
}

func (s *Server) lock(key string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(key))
	return &s.locks[h.Sum32()%uint32(len(s.locks))]
}

// Capacity reports the ASD's space.
func (s *Server) Capacity() (Capacity, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.cfg.Dir, &st); err != nil {
		return Capacity{}, fmt.Errorf("asd %s: statfs: %w", s.id, err)
	}
	c := Capacity{
		FSTotal:   int64(st.Blocks) * int64(st.Bsize),
		FSFree:    int64(st.Bavail) * int64(st.Bsize),
		Used:      s.used.Load(),
		FSID:      fmt.Sprintf("%08x%08x", uint32(st.Fsid.X__val[0]), uint32(st.Fsid.X__val[1])),
		FillLimit: s.cfg.FillLimit,
	}
	// Room left on the filesystem before it passes the fill limit (with a
	// capacity of its own, the limit applies to that, and the filesystem
	// is only kept from filling past the default limit).
	fsLimit := s.cfg.FillLimit
	if s.cfg.Capacity > 0 {
		fsLimit = max(fsLimit, DefaultFillLimit)
	}
	fsRoom := c.FSFree - int64(float64(c.FSTotal)*(1-fsLimit))
	if s.cfg.Capacity > 0 {
		c.Capacity = s.cfg.Capacity
		c.Free = min(int64(float64(c.Capacity)*s.cfg.FillLimit)-c.Used, fsRoom)
	} else {
		c.Capacity = c.FSTotal
		c.Free = fsRoom
	}
	c.Free = max(c.Free, 0)
	return c, nil
}

// Handler returns the ASD's HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", s.handleHealth)
	mux.HandleFunc("GET /v1/capacity", s.handleCapacity)
	mux.HandleFunc("PUT /v1/fragments/{key}", s.handlePut)
	mux.HandleFunc("GET /v1/fragments/{key}", s.handleGet)
	mux.HandleFunc("GET /v1/fragments/{key}/stat", s.handleStat)
	mux.HandleFunc("POST /v1/fragments/{key}/verify", s.handleVerify)
	mux.HandleFunc("DELETE /v1/fragments/{key}", s.handleDelete)
	mux.HandleFunc("GET /v1/fragments", s.handleList)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeASDError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if want := r.Header.Get(asdIDHeader); want != "" && want != s.id {
			s.log.Warn("request for another ASD refused", "method", r.Method, "path", r.URL.Path, "for", want, "remote", r.RemoteAddr)
			writeASDError(w, http.StatusConflict, "wrong_asd", fmt.Sprintf("this is ASD %s, not %s", s.id, want))
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// asdIDHeader names the ASD a request is meant for.
const asdIDHeader = "X-Ovs-Asd"

// Serve serves the API on l until ctx is done, then shuts down gracefully.
// The port speaks HTTP and the binary read protocol (see wire.go), told
// apart by a connection's first bytes.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return s.ServeHandler(ctx, l, s.Handler())
}

// ServeHandler is Serve with h answering HTTP requests (a wrapper of
// Handler, e.g. a test's that fails requests on demand).
func (s *Server) ServeHandler(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       5 * time.Minute, // a 256 MiB fragment at under 1 MB/s is a dead client
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	httpL := &connListener{addr: l.Addr(), ch: make(chan net.Conn), done: make(chan struct{})}
	wc := &wireConns{conns: map[net.Conn]struct{}{}}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(httpL) }()
	actx, stopAccept := context.WithCancel(ctx)
	defer stopAccept()
	go func() { errc <- s.acceptLoop(actx, l, httpL, wc) }()
	var local *net.UnixListener
	if s.cfg.LocalSocket != "" {
		var err error
		if local, err = listenLocal(s.cfg.LocalSocket); err != nil {
			s.log.Warn("no local socket; local clients go over TLS", "err", err)
		} else {
			go func() {
				if err := s.serveLocal(actx, local, httpL, wc); err != nil && !errors.Is(err, net.ErrClosed) {
					s.log.Warn("local socket stopped; local clients go over TLS", "err", err)
				}
			}()
		}
	}
	s.log.Info("asd serving", "addr", l.Addr().String(), "tls", s.tls != nil, "cluster", s.cfg.Cluster,
		"local_socket", local != nil, "dir", s.cfg.Dir, "node", s.cfg.Node, "site", s.cfg.Site, "fragments", s.count.Load(), "used", s.used.Load())
	var err error
	select {
	case err = <-errc:
		err = fmt.Errorf("asd %s: %w", s.id, err)
	case <-ctx.Done():
	}
	l.Close()
	if local != nil {
		local.Close() // removes the socket file
	}
	wc.closeAll()
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil {
		srv.Close()
	}
	s.fcache.closeAll()
	return err
}

type asdError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func writeASDError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(asdError{Error: msg, Code: code})
}

func writeJSONResponse(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers err with the status its kind calls for.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrFragmentNotFound):
		writeASDError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, ErrFragmentCorrupt), errors.Is(err, scos.ErrUnsupportedFormat):
		s.log.Warn("corrupt fragment", "method", r.Method, "path", r.URL.Path, "err", err)
		writeASDError(w, http.StatusUnprocessableEntity, "corrupt", err.Error())
	case errors.Is(err, ErrFull):
		s.log.Warn("write refused", "err", err)
		writeASDError(w, http.StatusInsufficientStorage, "full", err.Error())
	case errors.Is(err, scos.ErrInvalidName), errors.Is(err, errBadRequest):
		writeASDError(w, http.StatusBadRequest, "bad_request", err.Error())
	case errors.Is(err, errBadRange):
		writeASDError(w, http.StatusRequestedRangeNotSatisfiable, "bad_range", err.Error())
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeASDError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

var (
	errBadRequest = errors.New("bad request")
	errBadRange   = errors.New("range outside the fragment")
)

func (s *Server) health() (Health, error) {
	c, err := s.Capacity()
	if err != nil {
		return Health{}, err
	}
	return Health{ID: s.id, Cluster: s.cfg.Cluster, Node: s.cfg.Node, Site: s.cfg.Site, APIVersion: asdAPIVersion,
		Fragments: s.count.Load(), Capacity: c, Pid: os.Getpid()}, nil
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	h, err := s.health()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSONResponse(w, h)
}

func (s *Server) handleCapacity(w http.ResponseWriter, r *http.Request) {
	c, err := s.Capacity()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSONResponse(w, c)
}

func (s *Server) key(r *http.Request) (string, error) {
	key := r.PathValue("key")
	if err := checkFragmentKey(key); err != nil {
		return "", err
	}
	return key, nil
}

func (s *Server) handlePut(w http.ResponseWriter, r *http.Request) {
	key, err := s.key(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if r.ContentLength < 0 {
		writeASDError(w, http.StatusLengthRequired, "bad_request", "a fragment put needs a Content-Length")
		return
	}
	if r.ContentLength > MaxFragmentSize {
		writeASDError(w, http.StatusRequestEntityTooLarge, "bad_request",
			fmt.Sprintf("fragment of %d bytes: at most %d allowed", r.ContentLength, MaxFragmentSize))
		return
	}
	wantCRC, err := strconv.ParseUint(r.Header.Get("X-Ovs-Crc32c"), 16, 32)
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: X-Ovs-Crc32c header: want the hex CRC-32C of the body", errBadRequest))
		return
	}
	// The body is written to the file and forgotten (the header keeps
	// only checksums), so its buffer goes back to the pool.
	buf := s.bodies.get(int(r.ContentLength))
	defer s.bodies.put(buf)
	data := *buf
	if _, err := io.ReadFull(r.Body, data); err != nil {
		s.fail(w, r, fmt.Errorf("%w: reading the fragment: %v", errBadRequest, err))
		return
	}
	h, err := NewFragmentHeader(key, r.Header.Get("X-Ovs-Tag"), data, s.cfg.BlockSize, time.Now().UnixNano())
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: %v", errBadRequest, err))
		return
	}
	if h.DataCRC != uint32(wantCRC) {
		s.fail(w, r, fmt.Errorf("%w: fragment %s: body checksum %08x, X-Ovs-Crc32c %08x (damaged in transit)",
			errBadRequest, key, h.DataCRC, wantCRC))
		return
	}
	if err := s.put(r.Context(), h, data); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

// put writes the fragment durably: temporary file, fsync, rename, fsync of
// the directory. An existing fragment of the same key is replaced.
func (s *Server) put(ctx context.Context, h FragmentHeader, data []byte) error {
	hdr := h.Encode()
	size := int64(len(hdr)) + int64(len(data))
	c, err := s.Capacity()
	if err != nil {
		return err
	}
	if size > c.Free {
		return fmt.Errorf("%w: asd %s refuses %d bytes: %d of %d bytes used, %d free before the fill limit of %.4g%%",
			ErrFull, s.id, size, c.Used, c.Capacity, c.Free, s.cfg.FillLimit*100)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	path := FragmentPath(s.cfg.Dir, h.Key)
	dir := filepath.Dir(path)
	tmp := filepath.Join(dir, fsutil.TmpPrefix+h.Key+"-"+fsutil.RandomSuffix())
	if err := writeFileParts(tmp, hdr, data); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("asd %s: put %s: %w", s.id, h.Key, err)
	}
	mu := s.lock(h.Key)
	mu.Lock()
	defer mu.Unlock()
	var old int64 = -1
	if fi, err := os.Stat(path); err == nil {
		old = fi.Size()
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("asd %s: put %s: %w", s.id, h.Key, err)
	}
	if err := fsutil.SyncDir(dir); err != nil {
		return fmt.Errorf("asd %s: put %s: %w", s.id, h.Key, err)
	}
	if old >= 0 {
		s.used.Add(size - old)
	} else {
		s.used.Add(size)
		s.count.Add(1)
	}
	return nil
}

// open opens a fragment and decodes its header, checking that the file is
// as long as the header says.
func (s *Server) open(key string) (*os.File, FragmentHeader, error) {
	return openFragment(s.cfg.Dir, s.id, key)
}

// openFragment opens fragment key of the ASD asd in dir (see open).
func openFragment(dir, asd, key string) (*os.File, FragmentHeader, error) {
	f, err := os.Open(FragmentPath(dir, key))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, FragmentHeader{}, fmt.Errorf("%w: %s on asd %s", ErrFragmentNotFound, key, asd)
		}
		return nil, FragmentHeader{}, fmt.Errorf("asd %s: %s: %w", asd, key, err)
	}
	h, err := readFragmentHeader(f)
	if err != nil {
		f.Close()
		return nil, FragmentHeader{}, fmt.Errorf("asd %s: %s: %w", asd, key, err)
	}
	if h.Key != key {
		f.Close()
		return nil, FragmentHeader{}, fmt.Errorf("%w: asd %s: file %s holds fragment %q", ErrFragmentCorrupt, asd, key, h.Key)
	}
	return f, h, nil
}

func readFragmentHeader(f *os.File) (FragmentHeader, error) {
	st, err := f.Stat()
	if err != nil {
		return FragmentHeader{}, err
	}
	var fixed [fragmentFixedLen]byte
	n, err := f.ReadAt(fixed[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return FragmentHeader{}, err
	}
	hl, err := FragmentHeaderLen(fixed[:n])
	if err != nil {
		return FragmentHeader{}, err
	}
	if int64(hl) > st.Size() {
		return FragmentHeader{}, fmt.Errorf("%w: file of %d bytes shorter than its header (%d)", ErrFragmentCorrupt, st.Size(), hl)
	}
	buf := make([]byte, hl)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return FragmentHeader{}, err
	}
	h, err := DecodeFragmentHeader(buf)
	if err != nil {
		return FragmentHeader{}, err
	}
	if want := int64(h.HeaderLen) + h.DataLen; st.Size() != want {
		return FragmentHeader{}, fmt.Errorf("%w: file is %d bytes, header says %d", ErrFragmentCorrupt, st.Size(), want)
	}
	return h, nil
}

func parseInt64Param(r *http.Request, name string) (int64, bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("%w: %s=%q: want a non-negative integer", errBadRequest, name, v)
	}
	return n, true, nil
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	key, err := s.key(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	off, hasOff, err := parseInt64Param(r, "offset")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	length, hasLen, err := parseInt64Param(r, "length")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	of, err := s.fcache.acquire(key)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer of.release()
	f, h := of.f, of.h
	if !hasLen {
		length = h.DataLen - off
	}
	if (hasOff || hasLen) && (off > h.DataLen || length < 0 || length > h.DataLen-off) {
		s.fail(w, r, fmt.Errorf("%w: [%d,+%d) of fragment %s of %d bytes", errBadRange, off, length, key, h.DataLen))
		return
	}
	bufp := readBufPool.Get().(*[]byte)
	defer putBuf(&readBufPool, bufp)
	data, buf, err := readVerifiedBuf(f, h, off, length, *bufp)
	*bufp = buf
	if err != nil {
		s.fail(w, r, fmt.Errorf("asd %s: %w", s.id, err))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set("X-Ovs-Size", strconv.FormatInt(h.DataLen, 10))
	w.Header().Set("X-Ovs-Crc32c", fmt.Sprintf("%08x", h.DataCRC))
	_, _ = w.Write(data)
}

// readVerified reads [off, off+length) of the fragment's data, verifying the
// blocks it touches (or the whole-data checksum for a whole read).
func readVerified(f *os.File, h FragmentHeader, off, length int64) ([]byte, error) {
	data, _, err := readVerifiedBuf(f, h, off, length, nil)
	return data, err
}

// readBufPool holds read buffers of HTTP gets: a small read still reads
// and checks a whole checksum block (64 KiB by default), and allocating
// that for every 4 KiB read was a good part of an ASD's time.
var readBufPool = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBuf: bigger buffers (whole fragments) are left to the GC
// rather than kept in a pool.
const maxPooledBuf = 4 << 20

func putBuf(p *sync.Pool, b *[]byte) {
	if cap(*b) > maxPooledBuf {
		*b = nil
	}
	p.Put(b)
}

// readVerifiedBuf is readVerified into buf (grown if too small; returned
// for reuse). The data returned is a part of buf.
func readVerifiedBuf(f *os.File, h FragmentHeader, off, length int64, buf []byte) ([]byte, []byte, error) {
	if off == 0 && length == h.DataLen {
		buf = grow(buf, int(h.DataLen))
		if _, err := f.ReadAt(buf, int64(h.HeaderLen)); err != nil && !(errors.Is(err, io.EOF) && h.DataLen == 0) {
			return nil, buf, fmt.Errorf("%s: %w", h.Key, err)
		}
		if got := crc32c.Checksum(buf); got != h.DataCRC {
			return nil, buf, fmt.Errorf("%w: %s: data checksum %08x, header says %08x", ErrFragmentCorrupt, h.Key, got, h.DataCRC)
		}
		return buf, buf, nil
	}
	if length == 0 {
		return []byte{}, buf, nil
	}
	bs := int64(h.BlockSize)
	first := off / bs
	last := (off + length - 1) / bs
	lo, hi := first*bs, min((last+1)*bs, h.DataLen)
	buf = grow(buf, int(hi-lo))
	if _, err := f.ReadAt(buf, int64(h.HeaderLen)+lo); err != nil {
		return nil, buf, fmt.Errorf("%s: %w", h.Key, err)
	}
	if err := h.verifyBlocks(int(first), buf); err != nil {
		return nil, buf, err
	}
	return buf[off-lo : off-lo+length], buf, nil
}

func (s *Server) info(h FragmentHeader) FragmentInfo {
	return FragmentInfo{Key: h.Key, Size: h.DataLen, CRC32C: h.DataCRC, Tag: h.Tag, Created: h.Created,
		FileSize: int64(h.HeaderLen) + h.DataLen}
}

func (s *Server) handleStat(w http.ResponseWriter, r *http.Request) {
	key, err := s.key(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f, h, err := s.open(key)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f.Close()
	writeJSONResponse(w, s.info(h))
}

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	key, err := s.key(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f, h, err := s.open(key)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer f.Close()
	data, err := readVerified(f, h, 0, h.DataLen)
	if err == nil {
		err = h.verifyBlocks(0, data)
	}
	if err != nil {
		s.fail(w, r, fmt.Errorf("asd %s: %w", s.id, err))
		return
	}
	writeJSONResponse(w, s.info(h))
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	key, err := s.key(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	path := FragmentPath(s.cfg.Dir, key)
	mu := s.lock(key)
	mu.Lock()
	fi, err := os.Stat(path)
	if err == nil {
		err = os.Remove(path)
	}
	if err == nil {
		s.used.Add(-fi.Size())
		s.count.Add(-1)
	}
	mu.Unlock()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			s.fail(w, r, fmt.Errorf("%w: %s on asd %s", ErrFragmentNotFound, key, s.id))
			return
		}
		s.fail(w, r, fmt.Errorf("asd %s: delete %s: %w", s.id, key, err))
		return
	}
	if err := fsutil.SyncDir(filepath.Dir(path)); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

const (
	defaultListLimit = 10000
	maxListLimit     = 100000
)

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	prefix, after := q.Get("prefix"), q.Get("after")
	limit := int64(defaultListLimit)
	if n, ok, err := parseInt64Param(r, "limit"); err != nil {
		s.fail(w, r, err)
		return
	} else if ok && n > 0 {
		limit = min(n, maxListLimit)
	}
	details := q.Get("details") == "1"
	var names []string
	for i := range asdFanout {
		if err := r.Context().Err(); err != nil {
			return
		}
		ents, err := os.ReadDir(filepath.Join(s.frags, fmt.Sprintf("%02x", i)))
		if err != nil {
			s.fail(w, r, fmt.Errorf("asd %s: list: %w", s.id, err))
			return
		}
		for _, e := range ents {
			n := e.Name()
			if scos.ValidName(n) && strings.HasPrefix(n, prefix) && n > after && e.Type().IsRegular() {
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	out := FragmentList{Fragments: []FragmentInfo{}}
	if int64(len(names)) > limit {
		names, out.Truncated = names[:limit], true
	}
	for _, n := range names {
		if !details {
			fi := FragmentInfo{Key: n}
			if st, err := os.Stat(FragmentPath(s.cfg.Dir, n)); err == nil {
				fi.FileSize = st.Size()
			} else {
				continue // deleted while listing
			}
			out.Fragments = append(out.Fragments, fi)
			continue
		}
		f, h, err := s.open(n)
		switch {
		case err == nil:
			f.Close()
			out.Fragments = append(out.Fragments, s.info(h))
		case errors.Is(err, ErrFragmentCorrupt), errors.Is(err, scos.ErrUnsupportedFormat):
			out.Fragments = append(out.Fragments, FragmentInfo{Key: n, Corrupt: true})
		}
	}
	writeJSONResponse(w, out)
}

// writeFileParts creates path with the concatenation of parts and fsyncs it.
func writeFileParts(path string, parts ...[]byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := f.Write(p); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
