package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Devices turns a vdisk into a mounted filesystem on this host and back.
type Devices interface {
	// Mount exposes the NBD export uri as a block device, makes a
	// filesystem of type m.FS on it if it has none, and mounts it on
	// m.Mountpoint. It fills in m's Device and Fuse fields as it goes, so
	// that Unmount can undo a Mount that failed half-way.
	Mount(ctx context.Context, uri string, m *mountRecord) error
	// Unmount undoes Mount (unmount, detach, disconnect), flushing
	// everything to the vdisk; it is safe on what a failed Mount left.
	Unmount(ctx context.Context, m *mountRecord) error
	// Mounted reports whether m's filesystem is still mounted here over
	// a running nbdfuse.
	Mounted(m *mountRecord) bool
}

// HostDevices is Devices on a host without kernel NBD (no /dev/nbd*, as
// in containers and this project's CI): nbdfuse (libnbd) shows the
// export as a file, a loop device makes a block device of the file.
//
// nbdfuse does not reconnect, so it talks to the vdisk through nbdkit's
// nbd plugin under its retry filter: when the volume driver restarts (ovs
// up stopped and started, a node failing over), the filter reopens the
// connection and retries, and the filesystem's I/O waits instead of
// failing, for up to Reconnect.
type HostDevices struct {
	// Nbdfuse and Nbdkit are the programs (default: found in PATH).
	Nbdfuse, Nbdkit string
	// Reconnect is how long I/O waits for the volume driver to come back
	// before it fails (default 5 minutes).
	Reconnect time.Duration
	Log       *slog.Logger
}

const fuseFile = "disk"

func (h *HostDevices) log() *slog.Logger {
	if h.Log == nil {
		return slog.Default()
	}
	return h.Log
}

// Mount implements Devices.
func (h *HostDevices) Mount(ctx context.Context, uri string, m *mountRecord) error {
	if m.FuseMount == "" || m.Mountpoint == "" {
		return errors.New("mount: no directories given")
	}
	for _, dir := range []string{m.FuseMount, m.Mountpoint} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("mount: %w", err)
		}
	}
	// A FUSE mount left by an nbdfuse that died is in the way.
	if isMountpoint(m.FuseMount) {
		if err := unmountDir(ctx, m.FuseMount); err != nil {
			return err
		}
	}
	pid, err := h.startNbdfuse(ctx, uri, m.FuseMount)
	if err != nil {
		return err
	}
	m.FusePID = pid
	out, err := run(ctx, "losetup", "--find", "--show", filepath.Join(m.FuseMount, fuseFile))
	if err != nil {
		return fmt.Errorf("attach a loop device to the vdisk: %w", err)
	}
	m.Device = strings.TrimSpace(out)
	fsType, err := probeFS(ctx, m.Device)
	if err != nil {
		return err
	}
	if fsType == "" {
		// A blank vdisk (first mount): make the filesystem. Never a
		// vdisk that has one: probeFS found none.
		h.log().Info("making a filesystem on a blank vdisk", "vdisk", m.VDisk, "fs", m.FS, "device", m.Device)
		if err := mkfs(ctx, m.FS, m.Device); err != nil {
			return err
		}
		fsType = m.FS
	}
	m.FS = fsType
	if _, err := run(ctx, "mount", "-t", fsType, m.Device, m.Mountpoint); err != nil {
		return fmt.Errorf("mount the %s filesystem of vdisk %s: %w", fsType, m.VDisk, err)
	}
	return nil
}

// startNbdfuse starts nbdfuse in its own session, so that it outlives a
// restart of the plugin, and returns its pid once the export is served.
func (h *HostDevices) startNbdfuse(ctx context.Context, uri, dir string) (int, error) {
	nbdfuse, nbdkit := orPath(h.Nbdfuse, "nbdfuse"), orPath(h.Nbdkit, "nbdkit")
	reconnect := h.Reconnect
	if reconnect <= 0 {
		reconnect = 5 * time.Minute
	}
	pidFile := filepath.Join(filepath.Dir(dir), "nbdfuse.pid")
	os.Remove(pidFile)
	logPath := filepath.Join(filepath.Dir(dir), "nbdfuse.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("nbdfuse log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(nbdfuse, "-P", pidFile, filepath.Join(dir, fuseFile),
		"--command", nbdkit, "-s", "--exit-with-parent", "--filter=retry", "nbd",
		"uri="+uri,
		// One try a second for the whole window: the driver is back
		// within a second or two of a restart, and I/O should resume then.
		"retries="+strconv.Itoa(int(reconnect/time.Second)+1), "retry-delay=1", "retry-exponential=no")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start nbdfuse: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it whenever it ends
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(pidFile); err == nil {
			return cmd.Process.Pid, nil
		}
		select {
		case err := <-exited:
			return 0, fmt.Errorf("nbdfuse %s exited (%v): %s", uri, err, tail(logPath))
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			return 0, fmt.Errorf("nbdfuse %s: not ready: %w", uri, ctx.Err())
		case <-tick.C:
		}
	}
}

// Unmount implements Devices. Each step runs only if it is needed, so a
// second call, or one on a half-made mount, finishes the job.
func (h *HostDevices) Unmount(ctx context.Context, m *mountRecord) error {
	// umount writes back the filesystem and flushes the loop device; the
	// loop device passes the flush on as an fsync of nbdfuse's file, an
	// NBD FLUSH to the vdisk.
	if m.Mountpoint != "" && isMountpoint(m.Mountpoint) {
		if _, err := run(ctx, "umount", m.Mountpoint); err != nil {
			return fmt.Errorf("unmount vdisk %s: %w", m.VDisk, err)
		}
	}
	if m.Device != "" && m.FuseMount != "" && loopBacking(m.Device) == filepath.Join(m.FuseMount, fuseFile) {
		if _, err := run(ctx, "losetup", "--detach", m.Device); err != nil {
			return fmt.Errorf("detach %s from vdisk %s: %w", m.Device, m.VDisk, err)
		}
		// The kernel lets go of the file asynchronously.
		for loopBacking(m.Device) != "" && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if m.FuseMount != "" && isMountpoint(m.FuseMount) {
		if err := unmountDir(ctx, m.FuseMount); err != nil {
			return err
		}
	}
	if m.FusePID > 0 {
		// nbdfuse exits once unmounted; a stuck one is told to.
		deadline := time.Now().Add(10 * time.Second)
		for isNbdfuse(m.FusePID) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		if isNbdfuse(m.FusePID) {
			syscall.Kill(m.FusePID, syscall.SIGTERM)
		}
	}
	return nil
}

// Mounted implements Devices.
func (h *HostDevices) Mounted(m *mountRecord) bool {
	return m.Mountpoint != "" && isMountpoint(m.Mountpoint) && m.FuseMount != "" && isMountpoint(m.FuseMount) && isNbdfuse(m.FusePID)
}

// probeFS returns the filesystem type on dev, "" if there is none.
func probeFS(ctx context.Context, dev string) (string, error) {
	out, err := run(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", dev)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 { // blkid: nothing found
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("probe %s for a filesystem: %w", dev, err)
	}
	if t := strings.TrimSpace(out); t != "" {
		return t, nil
	}
	// Something blkid knows but that is not a filesystem (a partition
	// table, say): never format over it.
	return "", fmt.Errorf("%s holds data that is not a filesystem; refusing to format it", dev)
}

func mkfs(ctx context.Context, fs, dev string) error {
	var args []string
	switch fs {
	case "ext4":
		// nodiscard: the vdisk is new and reads as zeros; discarding it
		// all first would only cost time.
		args = []string{"mkfs.ext4", "-q", "-E", "nodiscard", dev}
	case "xfs":
		args = []string{"mkfs.xfs", "-q", "-K", dev}
	default:
		return fmt.Errorf("filesystem %q is not supported", fs)
	}
	if _, err := run(ctx, args[0], args[1:]...); err != nil {
		return fmt.Errorf("make a %s filesystem on %s: %w", fs, dev, err)
	}
	return nil
}

func unmountDir(ctx context.Context, dir string) error {
	if _, err := run(ctx, "umount", dir); err != nil {
		// A FUSE mount whose server died may refuse a plain umount.
		if _, lerr := run(ctx, "umount", "-l", dir); lerr != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
	return nil
}

// run runs a command and returns its stdout; a failure carries stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), &cmdError{cmd: name + " " + strings.Join(args, " "), err: err, stderr: strings.TrimSpace(stderr.String())}
	}
	return stdout.String(), nil
}

type cmdError struct {
	cmd, stderr string
	err         error
}

func (e *cmdError) Error() string {
	if e.stderr == "" {
		return fmt.Sprintf("%s: %v", e.cmd, e.err)
	}
	return fmt.Sprintf("%s: %v: %s", e.cmd, e.err, e.stderr)
}
func (e *cmdError) Unwrap() error { return e.err }

// isMountpoint reports whether dir is a mount point in this mount
// namespace (/proc/self/mountinfo, field 5).
func isMountpoint(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	dir = filepath.Clean(dir)
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == dir {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// loopBacking is the file behind loop device dev ("" if none).
func loopBacking(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// isNbdfuse reports whether pid runs nbdfuse (a pid from a record may
// have been reused by now).
func isNbdfuse(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return false // gone, or a zombie
	}
	arg0, _, _ := bytes.Cut(b, []byte{0})
	return filepath.Base(string(arg0)) == "nbdfuse"
}

func orPath(p, def string) string {
	if p == "" {
		return def
	}
	return p
}

// tail returns the end of a log file, for an error message.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 500 {
		b = b[len(b)-500:]
	}
	return strings.TrimSpace(string(b))
}
