package scos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// LocalASDsConfig configures StartLocalASDs.
type LocalASDsConfig struct {
	// Dir holds the ASDs: ASD i lives in Dir/asd-<i>.
	Dir   string
	Count int
	// Binary is the ovs binary whose `asd serve` runs each ASD (default:
	// this executable).
	Binary string
	// Host to listen on (default 127.0.0.1). BasePort: ASD i listens on
	// BasePort+i; 0 picks a free port for each ASD at its first start.
	// Either way the address is kept in Dir/asd-<i>/local.json, so an ASD
	// comes back on the same address.
	Host     string
	BasePort int
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
	StartTimeout time.Duration
}

// LocalASDs supervises ASDs run as child processes of this one, as a host
// runs them under systemd: each is restarted when it exits.
type LocalASDs struct {
	cfg    LocalASDsConfig
	log    *slog.Logger
	procs  []*localASD
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type localASD struct {
	index int
	dir   string
	addr  string

	mu       sync.Mutex
	id       string
	cmd      *exec.Cmd
	restarts int
	exited   chan struct{} // closed when the current process has been waited for
}

// LocalASD describes one supervised ASD.
type LocalASD struct {
	Index    int    `json:"index"`
	ID       string `json:"id"`
	Dir      string `json:"dir"`
	Addr     string `json:"addr"`
	Pid      int    `json:"pid"` // 0 while it is not running
	Restarts int    `json:"restarts"`
}

type localASDFile struct {
	Addr string `json:"addr"`
}

// StartLocalASDs starts cfg.Count ASDs under cfg.Dir (creating them on the
// first run) and waits until each answers. The ASDs run until Stop.
func StartLocalASDs(ctx context.Context, cfg LocalASDsConfig) (*LocalASDs, error) {
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
	l := &LocalASDs{cfg: cfg, log: cfg.Logger}
	for i := range cfg.Count {
		p := &localASD{index: i, dir: filepath.Join(cfg.Dir, fmt.Sprintf("asd-%d", i))}
		if err := os.MkdirAll(p.dir, 0o700); err != nil {
			return nil, fmt.Errorf("local ASD %d: %w", i, err)
		}
		addr, err := l.address(p.dir, i)
		if err != nil {
			return nil, err
		}
		p.addr = addr
		l.procs = append(l.procs, p)
	}
	bg, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for _, p := range l.procs {
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

// address returns the ASD's kept address, choosing one the first time.
func (l *LocalASDs) address(dir string, i int) (string, error) {
	path := filepath.Join(dir, "local.json")
	if data, err := os.ReadFile(path); err == nil {
		var f localASDFile
		if err := json.Unmarshal(data, &f); err != nil || f.Addr == "" {
			return "", fmt.Errorf("local ASD %s: bad %s", dir, path)
		}
		return f.Addr, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("local ASD %s: %w", dir, err)
	}
	var addr string
	if l.cfg.BasePort > 0 {
		addr = net.JoinHostPort(l.cfg.Host, strconv.Itoa(l.cfg.BasePort+i))
	} else {
		ln, err := net.Listen("tcp", net.JoinHostPort(l.cfg.Host, "0"))
		if err != nil {
			return "", fmt.Errorf("local ASD %s: finding a free port: %w", dir, err)
		}
		addr = ln.Addr().String()
		ln.Close()
	}
	data, _ := json.Marshal(localASDFile{Addr: addr})
	tmp := path + tmpPrefix + randomSuffix()
	if err := writeFileSync(tmp, data); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("local ASD %s: %w", dir, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("local ASD %s: %w", dir, err)
	}
	return addr, syncDir(dir)
}

func (l *LocalASDs) args(p *localASD) []string {
	args := []string{"asd", "serve", "--dir", p.dir, "--addr", p.addr, "--node", l.cfg.Node, "--site", l.cfg.Site}
	if l.cfg.FillLimit > 0 {
		args = append(args, "--fill-limit", strconv.FormatFloat(l.cfg.FillLimit, 'g', -1, 64))
	}
	if l.cfg.Capacity > 0 {
		args = append(args, "--capacity", strconv.FormatInt(l.cfg.Capacity, 10))
	}
	return args
}

// supervise runs the ASD, restarting it whenever it exits, until ctx ends.
func (l *LocalASDs) supervise(ctx context.Context, p *localASD, started chan struct{}) {
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

func (l *LocalASDs) startOne(p *localASD) error {
	logf, err := os.OpenFile(filepath.Join(p.dir, "asd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(l.cfg.Binary, l.args(p)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group (a terminal's ^C goes to ovs, which stops the
	// ASDs in order), and it dies with its parent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
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

// waitReady waits until every ASD answers its health check.
func (l *LocalASDs) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.StartTimeout)
	defer cancel()
	for _, p := range l.procs {
		c := NewASDClient(p.addr, nil)
		for {
			hctx, hcancel := context.WithTimeout(ctx, time.Second)
			h, err := c.Health(hctx)
			hcancel()
			if err == nil {
				p.mu.Lock()
				p.id = h.ID
				p.mu.Unlock()
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("local ASD %d (%s) not ready after %v: %v (see %s)", p.index, p.addr,
					l.cfg.StartTimeout, err, filepath.Join(p.dir, "asd.log"))
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// List describes the supervised ASDs.
func (l *LocalASDs) List() []LocalASD {
	out := make([]LocalASD, 0, len(l.procs))
	for _, p := range l.procs {
		p.mu.Lock()
		a := LocalASD{Index: p.index, ID: p.id, Dir: p.dir, Addr: p.addr, Restarts: p.restarts}
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
func (l *LocalASDs) Pids() map[string]int {
	out := map[string]int{}
	for _, a := range l.List() {
		if a.Pid != 0 && a.ID != "" {
			out[a.ID] = a.Pid
		}
	}
	return out
}

// Stop stops the ASDs (SIGTERM, then SIGKILL after 10s) and waits for them.
func (l *LocalASDs) Stop() error {
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
	return nil
}
