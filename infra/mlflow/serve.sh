#!/usr/bin/env bash
# A shared MLflow tracking server + model registry for Lingo sweeps.
#   infra/mlflow/serve.sh                       # sqlite backend + local artifacts under ./mlflow-server
#   MLFLOW_BACKEND=postgresql://user:pw@db:5432/mlflow \
#   MLFLOW_ARTIFACTS=s3://bucket/lingo infra/mlflow/serve.sh
#   MLFLOW_HOST=0.0.0.0 infra/mlflow/serve.sh   # listen on every interface (default: 127.0.0.1 only)
# Then point jobs at it: `lingo tune jobs/x.yaml mlflow.tracking_uri=http://HOST:5000`.
set -euo pipefail
ROOT=${MLFLOW_ROOT:-$PWD/mlflow-server}          # sqlite file + local artifact store live here
BACKEND=${MLFLOW_BACKEND:-sqlite:///$ROOT/mlflow.db}
ARTIFACTS=${MLFLOW_ARTIFACTS:-$ROOT/artifacts}   # s3://, gs://, or a shared filesystem path
HOST=${MLFLOW_HOST:-127.0.0.1}                   # this machine only; MLFLOW_HOST=0.0.0.0 opens it to Ray
                                                 # workers on other hosts (k8s.yaml sets it: a pod must)
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
