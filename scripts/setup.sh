#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for Hyperion: system packages, bpffs,
# the .venv virtualenv with the package (which compiles the XDP object).
# Idempotent: each step is skipped when already done, so a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  clang llvm libbpf-dev libxdp-dev bpftool linux-libc-dev libelf-dev zlib1g-dev pkg-config
  iproute2 ethtool make gcc python3-venv python3-dev
  tcpdump dnsutils prometheus libhyperscan-dev dnsmasq dnsperf iperf3 tcpreplay libclang-rt-14-dev
  iptables nftables libseccomp-dev
  iputils-ping unbound knot-dnsutils dnsdist
)

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages: ${missing[*]}; run as root (or install them) first"
    exit 1
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpffs holds Hyperion's pinned maps and link.
if [ "$(id -u)" -eq 0 ] && ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# The system's python3 (the python3-venv and python3-dev above), not one under root's home (pyenv):
# a venv keeps pointing at its interpreter, and `pytest tests/unit` must run as any user.
if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.hyperion-installed
# Reinstalled when the packaging or the C extension's sources changed since the last install.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ -n "$(find native bpf/include -newer "$stamp" -print -quit)" ]; then
  log "installing Python dependencies and the package (editable)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,lab]'
  touch "$stamp"
fi
# The XDP object is rebuilt whenever its sources change (make is incremental).
make --no-print-directory -s -C bpf
log "ready: .venv/bin/hyperion"
