#!/usr/bin/env bash
# Install (if needed) Debian's Chromium for the labeling app's browser tests, which drive it
# with Playwright (executable_path=/usr/bin/chromium); Playwright's own browser download is
# not used, and cannot reach its servers here.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
chromium --version
