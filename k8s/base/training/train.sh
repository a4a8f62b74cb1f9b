#!/bin/sh
# The learning run (CronJob pricing-training, every 6 hours): `pricing learn` reads the last LEARN_WINDOW of
# the archive's priced events and purchases from object storage, trains a challenger, judges it against the
# registry's `latest` on off-policy estimates and promotes it only when it wins. The registry is [models]
# registry_dir, the volume the TaskManagers mount read-only.
set -eu

# The archive the pricing-archive FlinkDeployment writes: [archive] path of the same mounted pricing.toml,
# so the two cannot drift apart (ARCHIVE_URI overrides it for a one-off run).
if [ -z "${ARCHIVE_URI:-}" ]; then
  ARCHIVE_URI="$(python -c 'from pricing.config import load_settings; s = load_settings(); print(s.archive.root(s.state_dir))')"
fi
case "$ARCHIVE_URI" in
  file:*|/*)
    echo "the archive is ${ARCHIVE_URI}, a path on the archive's own pods: set [archive] path to object storage (s3://...)" >&2
    exit 2 ;;
esac

# An S3-compatible store in the cluster (AWS_ENDPOINT_URL, e.g. MinIO): pyarrow, which reads the archive, takes
# the endpoint from the URI's query, not from that variable.
if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
  case "$ARCHIVE_URI" in
    *\?*) ;;
    *) ARCHIVE_URI="${ARCHIVE_URI}?endpoint_override=${AWS_ENDPOINT_URL#*://}&scheme=${AWS_ENDPOINT_URL%%://*}" ;;
  esac
fi

echo "== learn from ${ARCHIVE_URI}, the last ${LEARN_WINDOW:-24h}"
exec pricing learn --archive "$ARCHIVE_URI" --last "${LEARN_WINDOW:-24h}"
