# RedWeb: the two commands a user needs are `make demo` and `make test` (as root on Debian 12).
# Every target installs what is missing first and skips what is already there.
#
# The interpreter is Debian's /usr/bin/python3 on purpose: Mininet comes as a Debian package and is only
# importable from that interpreter, so the virtual environment is created from it with system site-packages.

SYS_PYTHON ?= /usr/bin/python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
STAMPS     := .build
APT_PKGS   := python3 python3-venv python3-dev build-essential mininet iptables bridge-utils \
              libnetfilter-queue-dev iperf3 curl openssl tcpdump iputils-ping iproute2 ethtool \
              dnsmasq-base dnsutils procps psmisc kmod nftables
PYTEST_ARGS ?=

.PHONY: all setup system venv build test demo bench reproduce reproduce-quick clean cleanup

all: build

setup: build

# Debian packages: install only the missing ones, so a second run does not touch apt at all.
system: $(STAMPS)/system
$(STAMPS)/system: Makefile
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "redweb: missing Debian packages: $$missing -- run as root (or: sudo apt-get install $$missing)" >&2; exit 2; fi; \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "Debian packages: all present"; fi
	@touch $@

venv: $(STAMPS)/venv
$(STAMPS)/venv: $(STAMPS)/system pyproject.toml
	@test -x $(PY) || $(SYS_PYTHON) -m venv --system-site-packages $(VENV)
	$(PIP) install -q --upgrade "pip>=23" "setuptools>=77" wheel "Cython>=3.0"
	$(PIP) install -q "pyahocorasick>=2.0" "cryptography>=41" "PyYAML>=6.0" "NetfilterQueue>=1.1" "scapy>=2.5" \
	    "pytest>=7" "hypothesis>=6" "aioquic>=1.0" "dnslib>=0.9" "matplotlib>=3.6" "atheris>=2.3"
	@touch $@

# The compiled core: rebuilt whenever a .pyx/.pxd changes; the editable install provides the `redweb` command.
build: $(STAMPS)/build
$(STAMPS)/build: $(STAMPS)/venv setup.py $(wildcard dpi/*.pyx dpi/*.pxd)
	$(PY) setup.py -q build_ext --inplace
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: build
	$(VENV)/bin/redweb demo

bench: build
	$(VENV)/bin/redweb bench classify
	$(VENV)/bin/redweb bench rules
	$(VENV)/bin/redweb bench inline
	$(PY) bench/pressure.py
	$(PY) bench/fuzz.py run --seconds 60

reproduce: build
	$(VENV)/bin/redweb measure reproduce --out out/reproduce

reproduce-quick: build
	$(VENV)/bin/redweb measure reproduce --quick --out out/reproduce-quick

# Remove rules, namespaces and processes a killed run may have left behind.
cleanup:
	-$(VENV)/bin/redweb cleanup
	-$(VENV)/bin/redweb lab --cleanup

clean:
	rm -rf build $(STAMPS) dpi/*.so dpi/*.c *.egg-info
