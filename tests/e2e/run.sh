#!/usr/bin/env bash
# Real-cluster end-to-end suite on kind: `make e2e-kind`. Skips cleanly where Docker or kind is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v kind >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "e2e-kind: skipped (needs a running Docker engine and kind on PATH)"
  exit 0
fi
exec .venv/bin/python -m pytest tests/e2e -m e2e -v -p no:cacheprovider "$@"
