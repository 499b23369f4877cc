package asd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/internal/timerslack"
	"github.com/ovs-storage/ovs/scos/internal/fsutil"
)

// LocalConfig configures StartLocal.
type LocalConfig struct {
	// Dir holds the ASDs: ASD i lives in Dir/asd-<i>.
	Dir   string
	Count int
	// Binary is the ovs binary whose `asd serve` runs each ASD (default:
	// this executable).
	Binary string
	// Host to listen on (default 127.0.0.1). The ASDs take ports from
	// FirstPort to LastPort (both 0: ports the kernel picks). An ASD's
	// address is kept in Dir/asd-<i>/local.json and it comes back on it;
	// when another process holds that port (or it is outside the range)
	// the ASD moves to the next free port of the range, and Moved says so.
	// This process binds each port and hands the socket to the ASD, so the
	// port stays the ASD's across its restarts.
	Host      string
	FirstPort int
	LastPort  int
	// SecretFile is passed to each ASD (--secret-file): the cluster
	// secret its clients must prove they hold.
	SecretFile string
	// HTTPClient reaches the ASDs (with the cluster's TLS credentials
	// when they have a secret); nil is plain HTTP.
	HTTPClient *http.Client
	// Node and Site of every ASD (default: the host name, and "local").
	Node string
	Site string
	// FillLimit and Capacity are passed to each ASD (0: its defaults).
	FillLimit float64
	Capacity  int64
	Logger    *slog.Logger
	// RestartDelay is the first wait before restarting an ASD that
	// exited; it doubles up to a minute while the ASD keeps failing
	// (default 200ms).
	RestartDelay time.Duration
	// StartTimeout bounds the wait for every ASD to answer (default 30s).
	// Start fails only if none answers: a preset can often be placed on
	// fewer ASDs (4+2 falls back to 4+1 on five).
	StartTimeout time.Duration
}

// LocalSet supervises ASDs run as child processes of this one, as a host
// runs them under systemd: each is restarted when it exits.
type LocalSet struct {
	cfg    LocalConfig
	log    *slog.Logger
	procs  []*localASD
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type localASD struct {
	index int
	dir   string
	addr  string
	ln    *os.File // the listening socket handed to each run of the ASD; nil: no port
	moved string   // the address it had before this start, if it moved
	ready bool     // answered at start

	mu       sync.Mutex
	id       string
	cmd      *exec.Cmd
	restarts int
	exited   chan struct{} // closed when the current process has been waited for
}

// LocalInfo describes one supervised ASD.
type LocalInfo struct {
	Index    int    `json:"index"`
	ID       string `json:"id"`
	Dir      string `json:"dir"`
	Addr     string `json:"addr"`
	Pid      int    `json:"pid"` // 0 while it is not running
	Restarts int    `json:"restarts"`
	// MovedFrom is its address before this start, when its port was
	// taken by another process (register the new address).
	MovedFrom string `json:"moved_from,omitempty"`
	// Running: it got a port and answered at start.
	Running bool `json:"running"`
}

type localASDFile struct {
	Addr string `json:"addr"`
}

// StartLocal starts cfg.Count ASDs under cfg.Dir (creating them on the
// first run) and waits until each answers. The ASDs run until Stop.
func StartLocal(ctx context.Context, cfg LocalConfig) (*LocalSet, error) {
	if cfg.Count < 1 {
		return nil, fmt.Errorf("local ASDs: count %d", cfg.Count)
	}
	if cfg.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("local ASDs: %w", err)
		}
		cfg.Binary = exe
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Node == "" {
		cfg.Node, _ = os.Hostname()
		if cfg.Node == "" {
			cfg.Node = "localhost"
		}
	}
	if cfg.Site == "" {
		cfg.Site = "local"
	}
	if cfg.RestartDelay == 0 {
		cfg.RestartDelay = 200 * time.Millisecond
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if (cfg.FirstPort == 0) != (cfg.LastPort == 0) || cfg.FirstPort < 0 || cfg.LastPort > 65535 || cfg.LastPort < cfg.FirstPort {
		return nil, fmt.Errorf("local ASDs: port range %d-%d", cfg.FirstPort, cfg.LastPort)
	}
	l := &LocalSet{cfg: cfg, log: cfg.Logger}
	for i := range cfg.Count {
		p := &localASD{index: i, dir: filepath.Join(cfg.Dir, fmt.Sprintf("asd-%d", i))}
		if err := os.MkdirAll(p.dir, 0o700); err != nil {
			return nil, fmt.Errorf("local ASD %d: %w", i, err)
		}
		addr, err := readLocalAddr(p.dir)
		if err != nil {
			return nil, err
		}
		p.addr = addr
		l.procs = append(l.procs, p)
	}
	if err := l.bindAll(); err != nil {
		l.closeListeners()
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for _, p := range l.procs {
		if p.ln == nil {
			continue
		}
		started := make(chan struct{})
		l.wg.Add(1)
		go l.supervise(bg, p, started)
		<-started
	}
	if err := l.waitReady(ctx); err != nil {
		l.Stop()
		return nil, err
	}
	return l, nil
}

func (l *LocalSet) inRange(port int) bool {
	return l.cfg.FirstPort == 0 || port >= l.cfg.FirstPort && port <= l.cfg.LastPort
}

// bindAll gives each ASD a listening socket: on its kept address if that
// is free and in the range, else on the next free port of the range. A
// port held by another process is skipped, never shared: whatever listens
// there is not this cluster's ASD.
func (l *LocalSet) bindAll() error {
	taken := map[int]bool{}
	for _, p := range l.procs {
		if p.addr == "" {
			continue
		}
		_, ps, _ := net.SplitHostPort(p.addr)
		port, _ := strconv.Atoi(ps)
		if !l.inRange(port) {
			continue
		}
		f, err := listenFile(p.addr)
		if err != nil {
			l.log.Warn("ASD port is taken by another process; moving the ASD", "asd", p.index, "addr", p.addr, "err", err)
			continue
		}
		p.ln = f
		taken[port] = true
	}
	next := l.cfg.FirstPort
	for _, p := range l.procs {
		if p.ln != nil {
			continue
		}
		old := p.addr
		for p.ln == nil {
			var addr string
			switch {
			case l.cfg.FirstPort == 0:
				addr = net.JoinHostPort(l.cfg.Host, "0")
			case next > l.cfg.LastPort:
				l.log.Error("no free port left for an ASD in the range; it does not run", "asd", p.index,
					"range", fmt.Sprintf("%d-%d", l.cfg.FirstPort, l.cfg.LastPort))
			default:
				if taken[next] {
					next++
					continue
				}
				addr = net.JoinHostPort(l.cfg.Host, strconv.Itoa(next))
				next++
			}
			if addr == "" {
				break
			}
			f, bound, err := listenFileAddr(addr)
			if err != nil {
				l.log.Debug("ASD port not free", "addr", addr, "err", err)
				if l.cfg.FirstPort == 0 {
					return fmt.Errorf("local ASD %d: %w", p.index, err)
				}
				continue
			}
			p.ln, p.addr = f, bound
			if old != "" && old != bound {
				p.moved = old
				l.log.Warn("ASD moved to a new port", "asd", p.index, "from", old, "to", bound)
			}
			if err := writeLocalAddr(p.dir, bound); err != nil {
				return err
			}
		}
	}
	return nil
}

func listenFile(addr string) (*os.File, error) {
	f, _, err := listenFileAddr(addr)
	return f, err
}

// listenFileAddr listens on addr and returns the socket as a file (to hand
// to a child) and the address bound.
func listenFileAddr(addr string) (*os.File, string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	defer ln.Close() // the file is a duplicate that keeps the socket open
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return nil, "", err
	}
	return f, ln.Addr().String(), nil
}

func (l *LocalSet) closeListeners() {
	for _, p := range l.procs {
		if p.ln != nil {
			p.ln.Close()
			p.ln = nil
		}
	}
}

// readLocalAddr returns the address the ASD in dir had ("" if none yet).
func readLocalAddr(dir string) (string, error) {
	path := filepath.Join(dir, "local.json")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("local ASD %s: %w", dir, err)
	}
	var f localASDFile
	if err := json.Unmarshal(data, &f); err != nil || f.Addr == "" {
		return "", fmt.Errorf("local ASD %s: bad %s", dir, path)
	}
	return f.Addr, nil
}

func writeLocalAddr(dir, addr string) error {
	path := filepath.Join(dir, "local.json")
	data, _ := json.Marshal(localASDFile{Addr: addr})
	tmp := path + fsutil.TmpPrefix + fsutil.RandomSuffix()
	if err := fsutil.WriteFileSync(tmp, data); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("local ASD %s: %w", dir, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("local ASD %s: %w", dir, err)
	}
	return fsutil.SyncDir(dir)
}

func (l *LocalSet) args(p *localASD) []string {
	// The socket is the child's fd 3 (its first ExtraFile).
	args := []string{"asd", "serve", "--dir", p.dir, "--listen-fd", "3", "--node", l.cfg.Node, "--site", l.cfg.Site}
	if sock := LocalSocketPath(p.dir); sock != "" {
		args = append(args, "--local-socket", sock)
	}
	if l.cfg.SecretFile != "" {
		args = append(args, "--secret-file", l.cfg.SecretFile)
	}
	if l.cfg.FillLimit > 0 {
		args = append(args, "--fill-limit", strconv.FormatFloat(l.cfg.FillLimit, 'g', -1, 64))
	}
	if l.cfg.Capacity > 0 {
		args = append(args, "--capacity", strconv.FormatInt(l.cfg.Capacity, 10))
	}
	return args
}

// supervise runs the ASD, restarting it whenever it exits, until ctx ends.
func (l *LocalSet) supervise(ctx context.Context, p *localASD, started chan struct{}) {
	defer l.wg.Done()
	delay := l.cfg.RestartDelay
	for first := true; ; first = false {
		runStart := time.Now()
		err := l.startOne(p)
		if first {
			close(started)
		}
		if err == nil {
			select {
			case <-p.exited:
			case <-ctx.Done():
				return
			}
			p.mu.Lock()
			state := p.cmd.ProcessState
			p.mu.Unlock()
			l.log.Warn("ASD exited; restarting it", "asd", p.index, "dir", p.dir, "status", state.String(), "after", delay)
		} else {
			l.log.Error("starting ASD", "asd", p.index, "err", err)
		}
		if time.Since(runStart) > time.Minute {
			delay = l.cfg.RestartDelay // it ran fine for a while
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Minute)
		p.mu.Lock()
		p.restarts++
		p.mu.Unlock()
	}
}

func (l *LocalSet) startOne(p *localASD) error {
	logf, err := os.OpenFile(filepath.Join(p.dir, "asd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(l.cfg.Binary, l.args(p)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{p.ln}
	// Its own process group (a terminal's ^C goes to ovs, which stops the
	// ASDs in order), and it dies with its parent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := timerslack.Start(cmd, timerslack.Daemon); err != nil {
		return fmt.Errorf("%s %v: %w", l.cfg.Binary, cmd.Args[1:], err)
	}
	exited := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
	l.log.Info("ASD started", "asd", p.index, "pid", cmd.Process.Pid, "addr", p.addr, "dir", p.dir)
	go func() {
		cmd.Wait()
		close(exited)
	}()
	return nil
}

// waitReady waits until every running ASD answers its health check, or
// for StartTimeout; it fails only if none answers.
func (l *LocalSet) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.StartTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range l.procs {
		if p.ln == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := NewClient(p.addr, l.cfg.HTTPClient)
			for {
				hctx, hcancel := context.WithTimeout(ctx, time.Second)
				h, err := c.Health(hctx)
				hcancel()
				if err == nil {
					p.mu.Lock()
					p.id, p.ready = h.ID, true
					p.mu.Unlock()
					return
				}
				select {
				case <-ctx.Done():
					l.log.Error("local ASD not ready; going on without it", "asd", p.index, "addr", p.addr,
						"after", l.cfg.StartTimeout, "err", err, "log", filepath.Join(p.dir, "asd.log"))
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
	wg.Wait()
	for _, p := range l.procs {
		if p.ready {
			return nil
		}
	}
	return fmt.Errorf("local ASDs: none of %d answered within %v (see %s)", len(l.procs), l.cfg.StartTimeout,
		filepath.Join(l.cfg.Dir, "asd-*", "asd.log"))
}

// List describes the supervised ASDs.
func (l *LocalSet) List() []LocalInfo {
	out := make([]LocalInfo, 0, len(l.procs))
	for _, p := range l.procs {
		p.mu.Lock()
		a := LocalInfo{Index: p.index, ID: p.id, Dir: p.dir, Addr: p.addr, Restarts: p.restarts, MovedFrom: p.moved, Running: p.ready}
		if p.cmd != nil && p.cmd.Process != nil {
			select {
			case <-p.exited:
			default:
				a.Pid = p.cmd.Process.Pid
			}
		}
		p.mu.Unlock()
		out = append(out, a)
	}
	return out
}

// Pids maps the id of each running ASD to its pid.
func (l *LocalSet) Pids() map[string]int {
	out := map[string]int{}
	for _, a := range l.List() {
		if a.Pid != 0 && a.ID != "" {
			out[a.ID] = a.Pid
		}
	}
	return out
}

// Sockets maps the id of each ASD to its local socket (see
// LocalSocketPath), for clients on this host.
func (l *LocalSet) Sockets() map[string]string {
	out := map[string]string{}
	for _, a := range l.List() {
		if sock := LocalSocketPath(a.Dir); a.ID != "" && sock != "" {
			out[a.ID] = sock
		}
	}
	return out
}

// Stop stops the ASDs (SIGTERM, then SIGKILL after 10s) and waits for them.
func (l *LocalSet) Stop() error {
	l.cancel()
	l.wg.Wait()
	var wg sync.WaitGroup
	for _, p := range l.procs {
		p.mu.Lock()
		cmd, exited := p.cmd, p.exited
		p.mu.Unlock()
		if cmd == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				l.log.Warn("ASD did not stop on SIGTERM; killing it", "asd", p.index, "pid", cmd.Process.Pid)
				cmd.Process.Kill()
				<-exited
			}
		}()
	}
	wg.Wait()
	l.closeListeners()
	return nil
}
