#!/usr/bin/env bash
# The whole test suite, as CI and a newcomer run it:
#   formatting, lints (warnings are errors), docs (warnings are errors), and
#   every test of the workspace: unit, property, multi-node and process-level
#   integration tests.
# It installs what the tests need when it is missing (Debian, apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

need_pkg() {
  # need_pkg COMMAND PACKAGE...: install PACKAGEs with apt-get unless COMMAND exists.
  local cmd=$1; shift
  if ! command -v "$cmd" >/dev/null 2>&1; then
    step "installing $* (needed by the tests)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    # Keep Debian from starting a system-wide daemon on install: the tests
    # start their own instances on loopback addresses and stop them again.
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && made_policy=1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
    if [ -n "$made_policy" ]; then $sudo rm -f "$policy"; fi
  fi
  return 0
}

step "test dependencies"
need_pkg prosody prosody lua-unbound
dpkg -s lua-unbound >/dev/null 2>&1 || need_pkg __missing_lua_unbound__ lua-unbound
# The c2s tests log in with slixmpp (PyPI) from a virtualenv in
# target/test-venv, which they create on first use (python3 -m venv + pip).
need_pkg python3 python3 python3-venv
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkg __missing_python3_venv__ python3-venv

step "toolchain: $(cargo --version)"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "cargo test"
cargo test --workspace --locked

step "all checks passed"
