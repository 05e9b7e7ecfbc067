#!/usr/bin/env bash
# A shared MLflow tracking server + model registry for Lingo sweeps.
#   infra/mlflow/serve.sh                       # sqlite backend + local artifacts under ./mlflow-server
#   MLFLOW_BACKEND=postgresql://user:pw@db:5432/mlflow \
#   MLFLOW_ARTIFACTS=s3://bucket/lingo infra/mlflow/serve.sh
# Then point jobs at it: `lingo tune jobs/x.yaml mlflow.tracking_uri=http://HOST:5000`.
set -euo pipefail
ROOT=${MLFLOW_ROOT:-$PWD/mlflow-server}          # sqlite file + local artifact store live here
BACKEND=${MLFLOW_BACKEND:-sqlite:///$ROOT/mlflow.db}
ARTIFACTS=${MLFLOW_ARTIFACTS:-$ROOT/artifacts}   # s3://, gs://, or a shared filesystem path
HOST=${MLFLOW_HOST:-0.0.0.0}                     # reachable from Ray workers, not only localhost
PORT=${MLFLOW_PORT:-5000}
WORKERS=${MLFLOW_WORKERS:-4}                     # parallel trials log concurrently
mkdir -p "$ROOT"
case "$ARTIFACTS" in *://*) ;; *) mkdir -p "$ARTIFACTS" ;; esac
export MLFLOW_DISABLE_TELEMETRY=true
# --artifacts-destination + --serve-artifacts: clients upload through the server (proxied), so trial
# workers need no credentials for the artifact store.
exec mlflow server \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" \
  --serve-artifacts \
  --host "$HOST" --port "$PORT" \
  --workers "$WORKERS"
