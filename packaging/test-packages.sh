#!/usr/bin/env bash
# Package acceptance test: builds tollstream-agent and tollstream-collector .deb packages with
# cargo-deb, runs lintian (no errors allowed), checks the units with systemd-analyze, then
# installs, upgrades, removes and purges both packages on THIS machine with dpkg, checking
# files, users, permissions and conffile handling at each step.
#
# It needs root and a machine whose packages it may change: CI's throwaway Debian 12 VM. It
# refuses to run where tollstream is installed (or its users exist), and it purges what it
# installed at the end, also when a check fails.
#
#   packaging/test-packages.sh [--profile dev|release]
#
# --profile release (the default) packages the optimised binaries, as a release would.
# CI passes --profile dev: the binaries its test step built are packaged as they are
# (stripped), so the package test adds no second, several-minute release build; what it
# tests is the packaging, which is the same for both profiles.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    *) echo "usage: $0 [--profile dev|release]" >&2; exit 64 ;;
  esac
done

packages=(tollstream-agent tollstream-collector)
fail() { echo "FAIL: $*" >&2; exit 1; }
# check WHAT COMMAND...: runs COMMAND (its output hidden), fails the test naming WHAT.
check() {
  local what="$1"
  shift
  if "$@" >/dev/null; then echo "ok: $what"; else fail "$what"; fi
}
step() { printf '\n--- %s\n' "$*"; }
# Known to dpkg in any state but "not installed" (installed, config-files, half-installed…).
installed() { dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^.[^n]'; }

[ "$(id -u)" = 0 ] || fail "run as root (it installs and purges packages)"
for p in "${packages[@]}"; do
  if installed "$p" || getent passwd "$p" >/dev/null || getent group "$p" >/dev/null; then
    fail "$p is installed here (or its user exists), and this test would purge it;" \
      "run it on a throwaway machine"
  fi
done
for tool in cargo-deb lintian dpkg-deb systemd-analyze; do
  command -v "$tool" >/dev/null || fail "$tool is missing (.ci/run installs it)"
done

work=$(mktemp -d /tmp/tollstream-deb-test.XXXXXX)
we_installed=0
cleanup() {
  local status=$?
  if [ "$we_installed" = 1 ]; then
    dpkg --purge "${packages[@]}" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

step "build ($profile profile) and package"
cargo build --locked --profile "$profile" -p tollstream-agent -p tollstream-collector --bins
# Each also makes a -dbgsym .ddeb (the debug info); it is not installed here.
for p in "${packages[@]}"; do
  cargo deb --no-build --fast --profile "$profile" -p "$p" -o "$work/out/"
  ln -s "$(ls "$work/out/${p}"_*.deb)" "$work/$p.deb"
done
ls -l "$work"/out/

step "lintian (errors fail, warnings are shown)"
# no-manual-page is a warning: --help is the reference (see packaging/README.md).
lintian --fail-on error --tag-display-limit 0 "$work"/out/*.deb || fail "lintian reported errors"

step "contents"
# "MODE OWNER PATH" lines, e.g. "-rw-r----- root/root ./etc/tollstream/agent.token".
contents() { dpkg-deb -c "$work/$1.deb" | awk '{sub("^0/0$", "root/root", $2); print $1, $2, $6}'; }
has() { contents "$1" | grep -Fxq -e "$2 ./$3"; }
check "agent binary" has tollstream-agent '-rwxr-xr-x root/root' usr/bin/tollstream-agent
check "agent unit" has tollstream-agent '-rw-r--r-- root/root' \
  usr/lib/systemd/system/tollstream-agent.service
check "agent.yaml" has tollstream-agent '-rw-r--r-- root/root' etc/tollstream/agent.yaml
check "agent.token 0640" has tollstream-agent '-rw-r----- root/root' etc/tollstream/agent.token
check "logrotate example" has tollstream-agent '-rw-r--r-- root/root' \
  usr/share/doc/tollstream-agent/examples/logrotate-toll
check "collector binary" has tollstream-collector '-rwxr-xr-x root/root' \
  usr/bin/tollstream-collector
check "collector unit" has tollstream-collector '-rw-r--r-- root/root' \
  'usr/lib/systemd/system/tollstream-collector.service'
check "collector.yaml" has tollstream-collector '-rw-r--r-- root/root' etc/tollstream/collector.yaml
check "agent-tokens 0640" has tollstream-collector '-rw-r----- root/root' \
  etc/tollstream/agent-tokens
check "thresholds example" has tollstream-collector '-rw-r--r-- root/root' \
  usr/share/doc/tollstream-collector/examples/booth-thresholds.csv
check "thresholds (a conffile, header only)" has tollstream-collector '-rw-r--r-- root/root' \
  etc/tollstream/booth-thresholds.csv

step "install (dpkg -i)"
we_installed=1
dpkg -i "$work/tollstream-agent.deb" "$work/tollstream-collector.deb"
for p in "${packages[@]}"; do
  check "$p installed" test "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p")" = "ii "
  check "$p --help" sh -c "$p --help | grep -q -- --config"
  check "$p --version" sh -c "$p --version | grep -q '^$p '"
  check "$p system user" sh -c \
    "getent passwd $p | awk -F: '\$3 < 1000 && \$7 ~ /nologin\$/' | grep -q ."
  check "$p group" getent group "$p"
  check "$p state dir 0750 owned by its user" \
    test "$(stat -c '%U:%G %a' "/var/lib/$p")" = "$p:$p 750"
  check "$p unit not enabled on install" \
    test ! -e "/etc/systemd/system/multi-user.target.wants/$p.service"
done
conffiles() { dpkg-query -W -f='${Conffiles}\n' "$1" | awk 'NF {print $1}' | sort | xargs; }
check "agent conffiles" test "$(conffiles tollstream-agent)" = \
  "/etc/tollstream/agent.token /etc/tollstream/agent.yaml"
check "collector conffiles" test "$(conffiles tollstream-collector)" = \
  "/etc/tollstream/agent-tokens /etc/tollstream/booth-thresholds.csv /etc/tollstream/collector.yaml"
check "agent.token root:tollstream-agent 0640" \
  test "$(stat -c '%U:%G %a' /etc/tollstream/agent.token)" = "root:tollstream-agent 640"
check "agent-tokens root:tollstream-collector 0640" \
  test "$(stat -c '%U:%G %a' /etc/tollstream/agent-tokens)" = "root:tollstream-collector 640"
check "the agent's user reads its token" \
  runuser -u tollstream-agent -- test -r /etc/tollstream/agent.token
check "the collector's user reads the tokens" \
  runuser -u tollstream-collector -- test -r /etc/tollstream/agent-tokens
check "nobody else reads them" runuser -u nobody -- sh -c \
  '! test -r /etc/tollstream/agent.token && ! test -r /etc/tollstream/agent-tokens'
# What ExecStartPre runs, as the service user: the shipped configs are valid.
check "agent check-config as its user" runuser -u tollstream-agent -- \
  tollstream-agent --config /etc/tollstream/agent.yaml check-config
# …except that the collector has no agent token yet: check-config (and so the unit's
# ExecStartPre) refuses to start it until one is added, saying which file.
check "collector check-config refuses the empty tokens file" runuser -u tollstream-collector -- \
  sh -c 'out=$(tollstream-collector --config /etc/tollstream/collector.yaml check-config 2>&1)
    test $? = 64 && echo "$out" | grep -q "agent tokens file /etc/tollstream/agent-tokens holds no token"'
check "collector status as its user (data_dir usable)" runuser -u tollstream-collector -- \
  tollstream-collector status

step "installed units"
for p in "${packages[@]}"; do
  unit=/usr/lib/systemd/system/$p.service
  check "$p: systemd-analyze verify" systemd-analyze verify "$unit"
  exposure=$(systemd-analyze security --offline=true "$unit" \
    | sed -n 's/.*exposure level for .*: \([0-9.]*\) .*/\1/p')
  echo "$p: systemd-analyze security exposure $exposure"
  check "$p: exposure <= 2.5" awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.5) }'
done
if command -v logrotate >/dev/null || [ -x /usr/sbin/logrotate ]; then
  check "logrotate example parses" \
    env PATH="$PATH:/usr/sbin" logrotate -d --state "$work/lr.state" \
    /usr/share/doc/tollstream-agent/examples/logrotate-toll
fi

step "upgrade keeps configuration and state"
# The next version, made from this one: its agent.yaml and collector.yaml differ from the
# installed ones, as a new release's defaults would.
repack() {
  local p=$1 conffile=$2 dir="$work/$1-next"
  dpkg-deb -R "$work/$p.deb" "$dir"
  sed -i 's/^Version: .*/&+next/' "$dir/DEBIAN/control"
  echo "# (added in the next version)" >>"$dir/$conffile"
  (cd "$dir" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$dir/DEBIAN/md5sums"
  dpkg-deb --root-owner-group -b "$dir" "$work/$p-next.deb" >/dev/null
}
repack tollstream-agent etc/tollstream/agent.yaml
repack tollstream-collector etc/tollstream/collector.yaml
# The admin's changes: agent.yaml edited, a token in each secret file; collector.yaml untouched.
sed -i 's|url: http://collector.example:8700|url: http://collector.test:8700|' \
  /etc/tollstream/agent.yaml
echo "0123456789abcdef0123456789abcdef" >/etc/tollstream/agent.token
echo "booth-017 0123456789abcdef0123456789abcdef" >>/etc/tollstream/agent-tokens
check "collector check-config as its user, with a token" runuser -u tollstream-collector -- \
  tollstream-collector --config /etc/tollstream/collector.yaml check-config
echo kept >/var/lib/tollstream-agent/marker
echo kept >/var/lib/tollstream-collector/marker
uid_before=$(id -u tollstream-agent)
# --force-confold: keep the admin's version without asking (apt would ask on a terminal).
dpkg -i --force-confold "$work/tollstream-agent-next.deb" "$work/tollstream-collector-next.deb"
for p in "${packages[@]}"; do
  check "$p upgraded" sh -c "dpkg-query -W -f='\${Version}' $p | grep -q '+next\$'"
  check "$p state kept" grep -q kept "/var/lib/$p/marker"
done
check "edited agent.yaml kept" grep -q 'collector.test' /etc/tollstream/agent.yaml
check "new agent.yaml beside it as .dpkg-dist" \
  grep -q 'next version' /etc/tollstream/agent.yaml.dpkg-dist
check "untouched collector.yaml updated" grep -q 'next version' /etc/tollstream/collector.yaml
check "agent token kept" grep -q 0123456789abcdef /etc/tollstream/agent.token
check "agent tokens kept" grep -q '^booth-017 ' /etc/tollstream/agent-tokens
check "agent.token still root:tollstream-agent 0640" \
  test "$(stat -c '%U:%G %a' /etc/tollstream/agent.token)" = "root:tollstream-agent 640"
check "same user" test "$(id -u tollstream-agent)" = "$uid_before"

step "remove keeps configuration, state and users"
dpkg --remove "${packages[@]}"
for p in "${packages[@]}"; do
  check "$p config-files only" test "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p")" = "rc "
  check "$p binary gone" test ! -e "/usr/bin/$p"
  check "$p unit gone" test ! -e "/usr/lib/systemd/system/$p.service"
  check "$p user kept" getent passwd "$p"
  check "$p state kept" test -e "/var/lib/$p/marker"
done
check "configuration kept" grep -q 'collector.test' /etc/tollstream/agent.yaml
check "tokens kept" test -s /etc/tollstream/agent-tokens

step "purge removes configuration, state and users"
dpkg --purge "${packages[@]}"
we_installed=0
for p in "${packages[@]}"; do
  check "$p gone from dpkg" sh -c "! dpkg-query -W -f='\${db:Status-Abbrev}' $p 2>/dev/null \
    | grep -q '^.[^n]'"
  check "$p state gone" test ! -e "/var/lib/$p"
  check "$p user gone" sh -c "! getent passwd $p"
  check "$p group gone" sh -c "! getent group $p"
done
check "/etc/tollstream gone" test ! -e /etc/tollstream
check "no systemd helper state left" \
  sh -c '! find /var/lib/systemd /etc/systemd -name "*tollstream*" 2>/dev/null | grep -q .'

step "packages pass"
