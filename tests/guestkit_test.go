package tests

import (
	"bufio"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The test guest: a Linux kernel from /boot with an initramfs built from
// busybox, that kernel's modules and a few host binaries with their
// libraries, so that no test downloads anything. Shared by the guest
// tests (guest_test.go: qemu directly; libvirt_test.go: under libvirtd).

// --- the guest ---------------------------------------------------------------

// guestKit is what boots the test guest: a kernel from /boot and an
// initramfs built from busybox and that kernel's modules.
type guestKit struct {
	qemu, kernel, initrd string
	// e2fsprogs, which make the guest's filesystem and read it back.
	mkfs, e2fsck, debugfs string
}

// The guest's modules: the virtio PCI transport and block driver, and ext4
// where it is not built in. Their dependencies come from modules.dep.
var guestModules = []string{"virtio_pci", "virtio_blk", "ext4"}

// needGuest finds qemu, a kernel with its modules and a static busybox,
// and builds the initramfs of the fsync test (guestInit).
func needGuest(t *testing.T) guestKit {
	t.Helper()
	return needGuestWith(t, guestSpec{init: guestInit, modules: guestModules})
}

// guestSpec is what goes into a test guest's initramfs beyond busybox.
type guestSpec struct {
	init    string   // the /init script
	modules []string // kernel modules, loaded in order by /init from /modules
	// binaries are host programs (found in PATH or sbin) copied to the
	// same paths with the shared libraries they need.
	binaries []string
}

// needGuestWith builds a guest from spec. The initramfs is a few MB, built
// in a fraction of a second, so it is built per test rather than cached.
func needGuestWith(t *testing.T, spec guestSpec) guestKit {
	t.Helper()
	needTools(t, "qemu-system-x86_64", "nbdcopy")
	qemu, _ := exec.LookPath("qemu-system-x86_64")
	var e2 [3]string
	for i, name := range []string{"mkfs.ext4", "e2fsck", "debugfs"} {
		if e2[i] = sbinTool(name); e2[i] == "" {
			missingTool(t, "%s not found (Debian package e2fsprogs)", name)
		}
	}
	busybox, err := staticBusybox()
	if err != nil {
		missingTool(t, "%v", err)
	}
	kver, kernel, err := guestKernel()
	if err != nil {
		missingTool(t, "%v", err)
	}
	mods, err := moduleClosure("/lib/modules/"+kver, spec.modules)
	if err != nil {
		t.Fatalf("kernel %s: %v", kver, err)
	}
	var files []string
	for _, b := range spec.binaries {
		p := sbinTool(b)
		if p == "" {
			missingTool(t, "%s not found for the guest", b)
		}
		files = append(files, p)
	}
	if files, err = withLibraries(files); err != nil {
		t.Fatalf("guest binaries: %v", err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd-"+kver+".cpio")
	if err := writeInitramfs(initrd, busybox, "/lib/modules/"+kver, mods, spec.init, files); err != nil {
		t.Fatalf("building the guest's initramfs: %v", err)
	}
	t.Logf("guest: kernel %s, modules %v, binaries %v", kernel, mods, spec.binaries)
	return guestKit{qemu: qemu, kernel: kernel, initrd: initrd,
		mkfs: e2[0], e2fsck: e2[1], debugfs: e2[2]}
}

// withLibraries adds to bins the shared libraries and the loader they
// need, as ldd lists them.
func withLibraries(bins []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, b := range bins {
		add(b)
		ldd, err := exec.Command("ldd", b).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", b, err)
		}
		for _, line := range strings.Split(string(ldd), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				add(f[2])
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				add(f[0]) // the loader
			}
		}
	}
	return out, nil
}

// sbinTool finds an administrator's tool in PATH or in the sbin
// directories, which a non-login PATH may lack.
func sbinTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// staticBusybox returns a busybox that needs no shared libraries (Debian
// package busybox-static): the initramfs has no libc.
func staticBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		static := true
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				static = false
			}
		}
		f.Close()
		if static {
			return p, nil
		}
	}
	return "", fmt.Errorf("no statically linked busybox (Debian package busybox-static)")
}

// guestKernel picks the newest /boot/vmlinuz-VER whose modules are in
// /lib/modules/VER (Debian package linux-image-cloud-amd64). The host's
// own kernel is not used: it may have no modules here at all.
func guestKernel() (ver, path string, err error) {
	cands, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Sort(sort.Reverse(sort.StringSlice(cands)))
	for _, k := range cands {
		v := strings.TrimPrefix(filepath.Base(k), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", v, "modules.dep")); err != nil {
			continue
		}
		if f, err := os.Open(k); err == nil {
			f.Close()
			return v, k, nil
		}
	}
	return "", "", fmt.Errorf("no readable /boot/vmlinuz-* with modules in /lib/modules (Debian package linux-image-cloud-amd64)")
}

// moduleClosure returns the .ko files (relative to dir) to load for the
// named modules, dependencies first; built-in modules need nothing.
func moduleClosure(dir string, names []string) ([]string, error) {
	deps := map[string][]string{} // path -> its dependencies
	byName := map[string]string{} // module name -> path
	data, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	modName := func(p string) string {
		b := filepath.Base(p)
		b = b[:strings.Index(b, ".ko")]
		return strings.ReplaceAll(b, "-", "_")
	}
	for _, line := range strings.Split(string(data), "\n") {
		path, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[path] = strings.Fields(rest)
		byName[modName(path)] = path
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, p := range strings.Fields(string(b)) {
			builtin[modName(p)] = true
		}
	}
	var order []string
	seen := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		// modprobe loads a module's dependency list from its end.
		d := deps[p]
		for i := len(d) - 1; i >= 0; i-- {
			visit(d[i])
		}
		order = append(order, p)
	}
	for _, n := range names {
		if builtin[n] {
			continue
		}
		p, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("module %s is neither built in nor in modules.dep", n)
		}
		visit(p)
	}
	for _, p := range order {
		if !strings.HasSuffix(p, ".ko") {
			// busybox's insmod cannot unpack .ko.xz or .ko.zst.
			return nil, fmt.Errorf("module %s is compressed; the guest's insmod needs plain .ko files", p)
		}
	}
	return order, nil
}

// guestInit is the guest's /init (busybox sh, PID 1). It writes
// $ovs_files files of 64 KiB to 1 MiB of random data into /data of the
// ext4 on /dev/vda, alternately through the page cache and with O_DIRECT
// (4 KiB at a time), and fsyncs each file and the directory; only then
// does it print "DONE <name> <sha256>". The checksum is of the source in
// RAM, never read back from the disk (which could be what lost the data).
// A file whose number is in $ovs_pause (comma separated) is 1 MiB written
// with O_DIRECT in two halves: after the first it prints "PAUSE <name>"
// and sleeps, unflushed, while the test kills the server. Kernel command
// line words name=value reach /init as environment variables.
// writeInitramfs writes an uncompressed newc cpio archive: busybox, init
// as /init, the modules (at their paths in modules.dep, under
// /lib/modules), /modules (their load order) and the host files (at the
// same paths, symlinks resolved).
func writeInitramfs(path, busybox, modDir string, mods []string, init string, files []string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := &cpioWriter{w: bufio.NewWriter(f)}
	made := map[string]bool{}
	for _, d := range []string{"bin", "dev", "proc", "sys", "mnt", "tmp", "lib", "lib/modules"} {
		w.add(d, 0o40755, 0, nil)
		made[d] = true
	}
	// mkdirs adds the missing parents of rel, parents first.
	mkdirs := func(rel string) {
		var missing []string
		for d := filepath.Dir(rel); d != "." && !made[d]; d = filepath.Dir(d) {
			made[d] = true
			missing = append(missing, d)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			w.add(missing[i], 0o40755, 0, nil)
		}
	}
	// The kernel opens /dev/console for init before anything mounts /dev.
	w.add("dev/console", 0o20600, 5<<8|1, nil)
	bb, err := os.ReadFile(busybox)
	if err != nil {
		f.Close()
		return err
	}
	w.add("bin/busybox", 0o100755, 0, bb)
	w.add("init", 0o100755, 0, []byte(init))
	var list []string
	for _, m := range mods {
		rel := filepath.Join("lib/modules", m)
		mkdirs(rel)
		data, err := os.ReadFile(filepath.Join(modDir, m))
		if err != nil {
			f.Close()
			return err
		}
		w.add(rel, 0o100644, 0, data)
		list = append(list, rel)
	}
	w.add("modules", 0o100644, 0, []byte(strings.Join(list, "\n")+"\n"))
	for _, p := range files {
		data, err := os.ReadFile(p) // follows symlinks
		if err != nil {
			f.Close()
			return err
		}
		rel := strings.TrimPrefix(filepath.Clean(p), "/")
		mkdirs(rel)
		w.add(rel, 0o100755, 0, data)
	}
	w.add("TRAILER!!!", 0, 0, nil)
	if err := w.flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpioWriter writes the "newc" format the kernel unpacks an initramfs from.
type cpioWriter struct {
	w   *bufio.Writer
	ino int
	err error
}

func (c *cpioWriter) add(name string, mode uint32, rdev int, data []byte) {
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev>>8, rdev&0xff, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad(len(hdr) + len(name) + 1)
	c.write(data)
	c.pad(len(data))
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) flush() error {
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}
