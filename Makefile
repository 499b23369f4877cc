# OVS build, test and benchmark entry points. `make help` lists them.

GO       ?= go
BIN      := bin/ovs
OVS_DATA ?= $(HOME)/.ovs
FUZZTIME ?= 30s
# Budgets: all of `make test` should stay under ~15 minutes on 2 cores.
UNIT_TIMEOUT ?= 25m
E2E_TIMEOUT  ?= 30m

# libvirt_dlopen, for every go command here: the libvirt commands open
# libvirt.so.0 when they run, so the binary starts on hosts without libvirt
# and building needs no libvirt-dev (plugins/libvirt).
export GOFLAGS ?= -tags=libvirt_dlopen

# Unit tests: every package but the end-to-end tests, with the race detector.
UNIT_PKGS = $$($(GO) list ./... | grep -v '/tests$$')

.PHONY: all help deps build test test-unit test-cinder test-ansible test-e2e lint bench demo fuzz clean

all: build

help:
	@echo 'make deps       install the Debian packages the tests and bench use (scripts/deps.sh)'
	@echo 'make build      build $(BIN)'
	@echo 'make test       lint, unit tests with -race, end-to-end tests (tests/) against $(BIN)'
	@echo 'make lint       gofmt check and go vet'
	@echo 'make test-cinder  flake8 and unit tests of the Cinder driver (plugins/cinder)'
	@echo 'make test-ansible ansible/ on 3 systemd containers: lint, site.yml, fio, upgrade.yml'
	@echo 'make bench      fio: ovs against nbdkit and qemu-nbd, written to bench/results.md'
	@echo 'make demo       build and run `ovs up --data $$OVS_DATA` (default ~/.ovs) in the foreground'
	@echo 'make fuzz       run every Go fuzz target for FUZZTIME (default 30s) each'
	@echo 'make clean      remove build and bench output'

deps:
	scripts/deps.sh

build:
	$(GO) build -o $(BIN) ./cmd/ovs

lint:
	@files=$$(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*'); \
	unformatted=$$(gofmt -l $$files); \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting (gofmt -w):"; echo "$$unformatted"; exit 1; \
	fi
	$(GO) vet ./...

test: deps build lint test-unit test-cinder test-ansible test-e2e

test-unit:
	OVS_REQUIRE_TOOLS=1 $(GO) test -race -timeout $(UNIT_TIMEOUT) $(UNIT_PKGS)

# The Cinder driver (Python, Debian's python3-cinder): flake8 and its unit
# tests on Cinder's test base (unittest: Cinder's base class does not run
# under pytest).
test-cinder:
	cd plugins/cinder && flake8 . && /usr/bin/python3 -W ignore -m unittest discover -s tests -t .

# ansible/ rolled out by Debian's ansible-playbook on 3 containers running
# systemd (tests/ansible_test.go; the first run debootstraps their rootfs
# into ~/.cache/ovs-test). Only this target runs it (OVS_TEST_ANSIBLE=1).
test-ansible: build
	OVS_TEST_ANSIBLE=1 OVS_REQUIRE_TOOLS=1 OVS_BIN=$(CURDIR)/$(BIN) \
	   $(GO) test -count=1 -timeout 60m -run '^TestAnsibleRollout$$' -v ./tests/

# The end-to-end tests drive $(BIN) with real clients; -race would only
# slow the driver, not the binary under test.
# Tests that measure something for the log (the iSCSI conformance counts)
# append it to tests/report.txt, printed at the end, pass or fail.
test-e2e: build
	@rm -f tests/report.txt
	@OVS_REPORT=$(CURDIR)/tests/report.txt OVS_REQUIRE_TOOLS=1 OVS_BIN=$(CURDIR)/$(BIN) \
	   $(GO) test -count=1 -timeout $(E2E_TIMEOUT) ./tests/; rc=$$?; \
	   if [ -f tests/report.txt ]; then cat tests/report.txt; fi; exit $$rc

bench: build
	OVS_BIN=$(CURDIR)/$(BIN) bench/run.sh
	@{ echo; echo '## Snapshots and rollback (bench/snapshots.sh)'; echo; \
	   OVS_BIN=$(CURDIR)/$(BIN) bench/snapshots.sh; } | tee -a bench/results.md
	@{ echo; echo '## File frontend: FUSE, NFS and NBD on one vdisk (bench/fs.sh)'; echo; \
	   OVS_BIN=$(CURDIR)/$(BIN) bench/fs.sh; } | tee -a bench/results.md
	@{ echo; echo '## Arakoon (ovs arakoon bench)'; echo; echo '```'; \
	   ./$(BIN) arakoon bench --duration 3s; echo '```'; } | tee -a bench/results.md
	@{ echo; echo '## Erasure-coded backend (ovs backend bench)'; echo; echo '```'; \
	   ./$(BIN) backend bench; echo '```'; } | tee -a bench/results.md
	OVS_BENCH_CLUSTER=$(CURDIR)/bench/results.md OVS_BIN=$(CURDIR)/$(BIN) \
	   $(GO) test -count=1 -timeout 45m -run '^TestBench(Cluster(DTL)?|ISCSI)$$' ./tests/

demo: build
	./$(BIN) up --data "$(OVS_DATA)"

fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

clean:
	rm -rf bin/ bench/*.json bench/results.md.tmp
