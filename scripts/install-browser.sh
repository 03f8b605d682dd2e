#!/bin/sh
# Install the Chromium the browser tests drive (tests/browserkit.py), idempotently, with a CJK
# font: the pages are Chinese first, and a machine without one renders boxes in screenshots
# (residents' phones and the kiosks have CJK fonts of their own; the hall serves none).
#
# The tests use Debian's `chromium` package through Playwright's `executable_path`;
# `playwright install` is never used (it downloads from the internet, which CI may not reach).
# Exit status: 0 if Chromium is present afterwards, 1 if it is not.
set -eu

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

# nginx: tests/test_deploy.py runs deploy/nginx.conf for real in front of a local cluster.
# coturn: tests/test_turn.py starts its own `turnserver` (tests/turnproc.py: free ports, a tmp
# config, never the package's service or /etc/turnserver.conf) and relays calls through it.
# prometheus: tests/test_metrics.py runs promtool over deploy/prometheus/ and a private
# prometheus (free port, tmp config and storage, never the package's service) scraping a hall.
PACKAGES="chromium fonts-noto-cjk nginx coturn prometheus"

have_font() {
    dpkg-query -W -f='${Status}' fonts-noto-cjk 2>/dev/null | grep -q "install ok installed"
}

have_program() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

if [ -x "$CHROMIUM" ] && have_font && have_program nginx && have_program turnserver \
        && have_program prometheus && have_program promtool; then
    echo "install-browser: $CHROMIUM, a CJK font, nginx, coturn and prometheus are already" \
         "installed; nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: $CHROMIUM is missing and apt-get is not available;" \
         "install Chromium by hand (Debian/Ubuntu packages: $PACKAGES)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-browser: $CHROMIUM is missing and installing it needs root" \
             "(run: apt-get install -y --no-install-recommends $PACKAGES)" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive

# Refresh the package lists only when they do not offer chromium yet (a fresh container has
# empty lists; a machine that ran apt-get update recently does not need another one).
if apt-cache show chromium >/dev/null 2>&1; then
    echo "install-browser: package lists already offer chromium; skipping apt-get update"
else
    echo "install-browser: running apt-get update"
    $SUDO apt-get update
fi

echo "install-browser: running apt-get install -y --no-install-recommends $PACKAGES"
# shellcheck disable=SC2086 # a list of package names
$SUDO apt-get install -y --no-install-recommends $PACKAGES

if [ -x "$CHROMIUM" ]; then
    echo "install-browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
    exit 0
fi
echo "install-browser: apt-get finished but $CHROMIUM is still missing" >&2
exit 1
