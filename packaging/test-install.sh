#!/usr/bin/env bash
# Installs, upgrades, removes and purges a built package inside a private mount namespace whose
# /etc, /usr and /var are overlays: the maintainer scripts run for real, the machine is untouched.
# Needs root and permission to create mount namespaces; prints SKIP otherwise.
#
#   packaging/test-install.sh target/debian/outbound-runner_<version>_<arch>.deb
set -euo pipefail

deb=$(realpath "$1")

if [ "$(id -u)" -ne 0 ] || ! unshare -m --propagation private true 2>/dev/null; then
  echo "SKIP: install test (needs root and mount namespaces)"
  exit 0
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

unshare -m --propagation private bash -euo pipefail -s "$deb" "$scratch" <<'INNER'
deb=$1
scratch=$2
for d in etc usr var; do
  mkdir -p "$scratch/upper/$d" "$scratch/ovl-work/$d"
  mount -t overlay overlay \
    -o "lowerdir=/$d,upperdir=$scratch/upper/$d,workdir=$scratch/ovl-work/$d" "/$d"
done
# Nothing below may reach the real system: stop unless every overlay is in place.
for d in etc usr var; do
  [ "$(findmnt -no FSTYPE "/$d")" = overlay ] || { echo "FAIL: /$d is not an overlay"; exit 1; }
done

pass() { printf 'PASS: install: %s\n' "$*"; }
fail() { printf 'FAIL: install: %s\n' "$*"; exit 1; }
check() { local what=$1; shift; if "$@" >/dev/null; then pass "$what"; else fail "$what"; fi; }
mode() { stat -c '%a %U' "$1"; }

unit=outbound-runner.service
dropin=/etc/systemd/system/outbound-runner.service.d/10-systemd-before-253.conf
wants=/etc/systemd/system/multi-user.target.wants/$unit
version=$(systemctl --version | sed -n '1s/^systemd \([0-9][0-9]*\).*/\1/p')

# A first install: the user, the unit enabled, not started.
dpkg -i "$deb" >"$scratch/install.log" 2>&1 || { cat "$scratch/install.log"; fail "dpkg -i"; }
check "says how to start it" grep -q 'enabled but not started' "$scratch/install.log"
check "system user exists" getent passwd outbound-runner
check "user has no login shell" sh -c 'getent passwd outbound-runner | grep -q ":/usr/sbin/nologin$"'
check "unit enabled (multi-user.target.wants)" test -L "$wants"
check "binary 755" test "$(mode /usr/bin/outbound-runner)" = "755 root"
check "config.toml 644" test "$(mode /etc/outbound-runner/config.toml)" = "644 root"
check "/etc/default/outbound-runner 600" test "$(mode /etc/default/outbound-runner)" = "600 root"
if [ "${version:-0}" -lt 253 ]; then
  check "systemd $version: Type=notify drop-in installed" grep -qx 'Type=notify' "$dropin"
else
  check "systemd $version: no drop-in" test ! -e "$dropin"
fi
check "the packaged binary runs" /usr/bin/outbound-runner --version

# An administrator's edit survives an upgrade (here: the same version again).
echo '# local edit' >>/etc/outbound-runner/config.toml
dpkg -i --force-confold "$deb" >"$scratch/upgrade.log" 2>&1 || { cat "$scratch/upgrade.log"; fail "upgrade"; }
check "upgrade keeps config.toml edits" grep -qx '# local edit' /etc/outbound-runner/config.toml
check "upgrade keeps the unit enabled" test -L "$wants"

# Remove: the program goes, configuration stays.
install -d -m 0700 /etc/credstore
echo 'postgres://u@db/app' >/etc/credstore/outbound-runner.database_url
mkdir -p /var/lib/outbound-runner
dpkg -r outbound-runner >"$scratch/remove.log" 2>&1 || { cat "$scratch/remove.log"; fail "dpkg -r"; }
check "remove deletes the binary" test ! -e /usr/bin/outbound-runner
check "remove keeps config.toml" test -e /etc/outbound-runner/config.toml
check "remove keeps credentials" test -e /etc/credstore/outbound-runner.database_url
check "remove deletes the drop-in" test ! -e "$dropin"

# Purge: configuration, credentials and state go; the user stays.
dpkg -P outbound-runner >"$scratch/purge.log" 2>&1 || { cat "$scratch/purge.log"; fail "dpkg -P"; }
check "purge deletes /etc/outbound-runner" test ! -e /etc/outbound-runner
check "purge deletes /etc/default/outbound-runner" test ! -e /etc/default/outbound-runner
check "purge deletes credentials" test ! -e /etc/credstore/outbound-runner.database_url
check "purge deletes /var/lib/outbound-runner" test ! -e /var/lib/outbound-runner
check "purge leaves no enablement symlink" test ! -L "$wants"
check "purge keeps the system user" getent passwd outbound-runner
INNER
