#!/bin/sh
# Install the Chromium the browser tests drive (tests/test_browser_rtc.py), idempotently.
#
# The tests use Debian's `chromium` package through Playwright's `executable_path`;
# `playwright install` is never used (it downloads from the internet, which CI may not reach).
# Exit status: 0 if Chromium is present afterwards, 1 if it is not.
set -eu

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [ -x "$CHROMIUM" ]; then
    echo "install-browser: $CHROMIUM is already installed; nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: $CHROMIUM is missing and apt-get is not available;" \
         "install Chromium by hand (Debian/Ubuntu package: chromium)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-browser: $CHROMIUM is missing and installing it needs root" \
             "(run: apt-get install -y --no-install-recommends chromium)" >&2
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

echo "install-browser: running apt-get install -y --no-install-recommends chromium"
$SUDO apt-get install -y --no-install-recommends chromium

if [ -x "$CHROMIUM" ]; then
    echo "install-browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
    exit 0
fi
echo "install-browser: apt-get finished but $CHROMIUM is still missing" >&2
exit 1
