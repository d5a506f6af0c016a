#!/usr/bin/env bash
# The style pass (docs/architecture.md, "Style checks"). Without arguments: ruff's safe
# autofixes (import order, pyupgrade), the formatter, then the checks. With --check: the checks
# alone, changing nothing, as CI runs them (.ci/run). Run from anywhere; works on the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--check" ]]; then
  ruff check --fix .
  ruff format .
fi
ruff check .
ruff format --check .
pyright
