#!/bin/sh
# The nightly training run (the CronJob pricing-training): backfill the training set from the event
# history, train, and promote the new version only when it beats `latest` on the held-out log-loss
# (or when there is no `latest` yet). The TaskManagers read the registry read-only.
set -eu
work="${TRAINING_WORK_DIR:-/work}/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$work"

echo "== backfill from ${HISTORY_DIR}"
pricing backfill --history "$HISTORY_DIR" --out "$work/training-set"

echo "== train"
pricing train --data "$work/training-set" | tee "$work/train.log"
version="$(sed -n 's/^published \(v[^ ]*\).*/\1/p' "$work/train.log")"
test -n "$version" || { echo "no published version in the training output" >&2; exit 1; }

echo "== evaluate ${version} against latest"
pricing models show "$version" --json > "$work/candidate.json"
if pricing models show latest --json > "$work/latest.json" 2>/dev/null; then
  verdict="$(python - "$work/candidate.json" "$work/latest.json" "${MAX_LOG_LOSS_REGRESSION:-0}" <<'PY'
import json, sys
candidate, latest = (json.load(open(p))["metrics"]["log_loss"] for p in sys.argv[1:3])
print("promote" if candidate <= latest + float(sys.argv[3]) else "keep")
print(f"candidate log-loss {candidate:.5f}, latest {latest:.5f}", file=sys.stderr)
PY
)"
else
  echo "no latest version yet"
  verdict=promote
fi

if [ "$verdict" = promote ]; then
  pricing models promote "$version"
  echo "promoted ${version}"
else
  echo "kept latest; ${version} stays in the registry unpromoted"
fi
rm -rf "$work"
