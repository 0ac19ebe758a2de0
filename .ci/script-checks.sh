#!/usr/bin/env bash
# Static checks of the project's shell scripts (the kind suite's among them,
# which CI cannot run for want of a container engine): each must parse
# (`bash -n`) and pass shellcheck.
#
# The shellcheck program comes from Debian's package; .ci/run installs it
# and sets WEIR_REQUIRE_SHELLCHECK=1, so on CI a missing shellcheck fails.
# Elsewhere the shellcheck part is skipped with a note.
set -Eeuo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

scripts=(scripts/test scripts/kill-trials .ci/run .ci/k8s-checks.sh .ci/real-broker.sh .ci/script-checks.sh e2e/run.sh)
for script in "${scripts[@]}"; do
  [ -f "$script" ] || { echo "script-checks: FAILED: $script is missing" >&2; exit 1; }
  bash -n "$script" || { echo "script-checks: FAILED: $script does not parse" >&2; exit 1; }
done
echo "==> bash -n: ${#scripts[@]} scripts parse"

if command -v shellcheck >/dev/null; then
  shellcheck --shell=bash --severity=style "${scripts[@]}" \
    || { echo "script-checks: FAILED: shellcheck" >&2; exit 1; }
  echo "==> shellcheck: ${#scripts[@]} scripts clean"
elif [ "${WEIR_REQUIRE_SHELLCHECK:-0}" = 1 ]; then
  echo "script-checks: FAILED: shellcheck is not installed (apt-get install shellcheck)" >&2
  exit 1
else
  echo "==> shellcheck: not installed, skipped (apt-get install shellcheck)"
fi
