#!/usr/bin/env bash
# Install the Debian packages that OVS's tests and benchmarks need.
#
# Idempotent and fast when everything is there: each package is checked with
# dpkg first, and apt-get (update + install) only runs for what is missing.
# Runs as root, or through sudo when that is available.
#
#   libnbd-bin      nbdinfo, nbdcopy (end-to-end tests)
#   python3-libnbd  nbdsh and libnbd's Python binding (tests/testdata/nbdio.py)
#   python3         bench/fiojson.py, and the binding's interpreter
#   nbdkit          the file and null plugins (bench baselines)
#   qemu-utils      qemu-img, qemu-io, qemu-nbd (tests, bench baseline)
#   fio             with its nbd ioengine (tests, bench)
#   qemu-system-x86, linux-image-cloud-amd64, busybox-static, e2fsprogs
#                   a tiny guest for tests/guest_test.go: qemu's NBD client
#                   (reconnect-delay) under a real Linux kernel, whose
#                   initramfs the test builds from busybox and the kernel's
#                   /lib/modules
#   libiscsi-bin    iscsi-inq, iscsi-ls, iscsi-test-cu (the iSCSI target's
#                   tests: libiscsi's own conformance suite)
#   tgt             Linux tgt, the reference target iscsi-test-cu is also
#                   run against in the same test
#   qemu-block-extra  qemu-img's iscsi:// and nfs:// drivers
#   libnfs-utils    nfs-ls, nfs-cp, nfs-cat (the NFS export's tests)
#   python3-cinder, cinder-api, cinder-scheduler, cinder-volume
#                   OpenStack Cinder (21.x) for the OVS Cinder driver
#                   (plugins/cinder): its unit tests on Cinder's own test base,
#                   and tests/cinder_test.go, which runs the three services
#   rabbitmq-server the message bus between the Cinder services (the test
#                   starts its own on free ports; the package's service is
#                   not used)
#   flake8          lint of plugins/cinder
#   chromium        headless browser for tests/dashboard_test.go (the web
#                   dashboard, driven through chromedp)
#   prometheus      the real Prometheus server tests/metrics_test.go runs
#                   to scrape `ovs up` (the package's service is not used)
#   libvirt-daemon-system, libvirt-daemon-driver-qemu, libvirt-clients
#                   a real libvirtd (started by tests/libvirt_test.go without
#                   systemd) and virsh, for plugins/libvirt; the qemu driver
#                   is only a Recommends of libvirt-daemon
#   libvirt-dev, pkg-config  a plain `go build` without the Makefile's
#                   libvirt_dlopen tag links libvirt
#   ansible, ansible-lint  Debian's ansible-playbook (ansible-core 2.14 with
#                   the community.docker collection) and ansible-lint
#                   (tests/ansible_test.go runs ansible/ on 3 hosts)
#   debootstrap     the rootfs of those hosts (Debian bookworm
#                   minbase with systemd) and the dockerd the test starts
#                   itself to run them as containers (no registry)
#   python3-requests  the driver's HTTP client (a dependency of Cinder too)
#   docker.io       a real dockerd (and its CLI, containerd, runc) for
#                   tests/docker_test.go, the Docker volume plugin
#                   (plugins/docker); the test starts its own daemon, the
#                   package's service is not used. The plugin itself mounts
#                   through nbdfuse (libnbd-bin) and nbdkit's nbd plugin with
#                   its retry filter (nbdkit), a loop device (mount's losetup)
#                   and mkfs.ext4 (e2fsprogs); the test's image is
#                   busybox-static
#   gcc, libc6-dev  cgo, which `go test -race` needs
#   make, git, ca-certificates   building, module downloads
#
#   fuse3           fusermount3, for ovs up --mount (the FUSE file frontend,
#                   tests/fs_test.go: also e2fsprogs' mkfs.ext4/e2fsck on a
#                   loop device over a vdisk file, fio, qemu-img)
# Extra packages can be added with DEPS_EXTRA="pkg1 pkg2".
set -euo pipefail

packages=(
	libnbd-bin python3-libnbd python3 nbdkit qemu-utils fio
	qemu-system-x86 linux-image-cloud-amd64 busybox-static e2fsprogs
	libiscsi-bin tgt qemu-block-extra libnfs-utils
	python3-cinder cinder-api cinder-scheduler cinder-volume rabbitmq-server
	flake8 python3-requests chromium prometheus docker.io
	libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
	ansible ansible-lint debootstrap fuse3
	gcc libc6-dev make git ca-certificates
)
# shellcheck disable=SC2206
packages+=(${DEPS_EXTRA:-})

installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${packages[@]}"; do
	installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || {
			echo "deps: need root (or sudo) to install: ${missing[*]}" >&2
			exit 1
		}
		sudo=(sudo)
	fi
	export DEBIAN_FRONTEND=noninteractive
	# The cinder and rabbitmq packages start their services on install
	# where an init system runs; the tests start their own, on free ports.
	#
	# cinder-common's post-install script fails when the host's own name
	# does not resolve (a chroot, some minimal images): give it the line
	# Debian's installer writes, 127.0.1.1 NAME, and say so.
	if ! getent hosts "$(hostname)" >/dev/null 2>&1; then
		echo "deps: $(hostname) does not resolve; adding '127.0.1.1 $(hostname)' to /etc/hosts (cinder-common needs it)"
		echo "127.0.1.1 $(hostname)" | "${sudo[@]}" tee -a /etc/hosts >/dev/null
	fi
	"${sudo[@]}" apt-get update -q
	"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# What the tests run, checked by name: a package can be installed while
# its tool is not what PATH finds.
fail=0
for tool in nbdinfo nbdcopy nbdsh nbdkit qemu-img qemu-io qemu-nbd fio python3 gcc \
	qemu-system-x86_64 busybox iscsi-inq iscsi-ls iscsi-test-cu tgtd tgtadm \
	cinder-api cinder-scheduler cinder-volume cinder-manage flake8 dockerd nbdfuse \
	virsh libvirtd virtlogd pkg-config fusermount3; do
	if ! command -v "$tool" >/dev/null; then
		echo "deps: $tool not found in PATH" >&2
		fail=1
	fi
done
if ! fio --enghelp=nbd >/dev/null 2>&1; then
	echo "deps: fio has no nbd ioengine" >&2
	fail=1
fi
# nbdsh runs `python3 -m nbd` with the first python3 in PATH; the binding
# lives in Debian's python3 (a pyenv or venv python3 lacks it, which only
# matters to nbdsh: the tests call /usr/bin/python3 directly).
if ! /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
	echo "deps: /usr/bin/python3 cannot import nbd (python3-libnbd)" >&2
	fail=1
fi
if ! /usr/bin/python3 -c 'import cinder.volume.driver, requests' 2>/dev/null; then
	echo "deps: /usr/bin/python3 cannot import cinder (python3-cinder)" >&2
	fail=1
fi
[ "$fail" -eq 0 ] || exit 1
[ "${#missing[@]}" -gt 0 ] || echo "deps: all present"
