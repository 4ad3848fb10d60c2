#!/usr/bin/env bash
# Real-cluster end-to-end suite on kind (`make e2e-kind`): builds the images (`make images`), creates a
# kind cluster with labelled nodes, installs the chart with helm, applies the examples. Skips cleanly
# where Docker, a running Docker engine, or kind is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v kind >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "e2e-kind: skipped (needs kind on PATH and a running Docker engine)"
  exit 0
fi
if [ -z "${HELM:-}" ] && ! command -v helm >/dev/null 2>&1; then
  python3 scripts/fetch_helm.py .tools/helm
  export HELM="$PWD/.tools/helm"
fi
if [ -z "${CONTINUUM_E2E_SKIP_BUILD:-}" ]; then
  make images
fi
exec .venv/bin/python -m pytest tests/e2e -m e2e -v -p no:cacheprovider "$@"
