"""`lingo predict`: registered models (one base, one or more tasks) over a sequence file, in one pass.

  lingo predict --model models:/lingo-prom_core_tata@champion [--model models:/lingo-tf_0/3] \\
                --input seqs.fa --output preds.parquet [--tracking-uri URI]

Every user error (unknown model/alias/version, bad input letters, a base whose sha256 differs, models
on different bases) is one line on stderr and exit 2, before anything is written: the output is
assembled next to its final name and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from lingo_core.cliparse import fail
from lingo_core.storage import atomic_file
from orchestrator.execution_spec import default_tracking_uri

# MLflow (orchestrator.tracking), torch (lingo_core.predict, lingo_core.artifacts), pyarrow and tqdm are
# imported inside the functions that use them: `lingo predict --help` and argument errors answer without them.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr carries our bar and errors only

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
DEFAULT_TRACKING = "runs/default"  # the main job's store (jobs/default.yaml), relative to the checkout


class PredictCliError(Exception):
    """A problem the user can fix; printed as one line."""


@dataclass(frozen=True)
class ModelSource:
    uri: str
    name: str
    version: str
    adapter_dir: Path  # the export folder inside the downloaded version


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lingo predict",
        description="Predict with registered Lingo models. The base model is loaded once; several --model "
        "(several tasks on one base) run in one pass over the input. Writes one Parquet file: id, sequence, "
        "and per task <task>.label, <task>.label_name, <task>.prob_<class>.",
        epilog="Exit status 2 with one line on stderr, and no output file, for: an unknown model, alias or "
        "version; a letter other than ACGTN (file and line named); an adapter whose base model sha256 "
        "differs from the weights found here; models trained on different bases.")
    p.add_argument("--model", action="append", required=True, metavar="URI",
                   help="models:/lingo-<task>@<alias> (e.g. @champion) or models:/lingo-<task>/<version>; repeat "
                   "for more tasks on the same base")
    p.add_argument("--input", required=True, metavar="FILE",
                   help="sequences: .fa/.fasta/.fna[.gz] (id = first header word), .csv[.gz] or .parquet "
                   "(column 'sequence', optional 'id')")
    p.add_argument("--output", required=True, metavar="FILE.parquet", help="predictions (replaced if present)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking/registry store (default: $MLFLOW_TRACKING_URI, else "
                   f"sqlite {DEFAULT_TRACKING}/mlflow.db)")
    p.add_argument("--base-model", default=None, metavar="PATH",
                   help="base model to load instead of the one the adapters record (a folder, .gguf or alias); its "
                   "sha256 must still match theirs")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="sequences per forward pass (default: 16)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if present, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def tracking_uri(given: str | None) -> str:
    from orchestrator import tracking  # MLflow: heavy, see the note at the top

    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(DEFAULT_TRACKING)
    if (db := tracking.missing_sqlite_store(uri)) is not None:
        raise PredictCliError(f"no MLflow store at {db}; run `lingo tune` first or pass --tracking-uri")
    return uri


def resolve(uri: str, tracking: str, dst: Path) -> ModelSource:
    """Registry URI -> the downloaded version's export folder. Versions registered before pyfunc models
    existed point at the bare export folder; that still works here."""
    # MLflow: heavy, see the note at the top
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from orchestrator import tracking as trk

    m = _URI.match(uri)
    if m is None:
        raise PredictCliError(f"--model {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, version = m["name"], m["alias"], m["version"]
    c = trk.client(tracking)
    try:
        c.get_registered_model(name)
    except MlflowException:
        known = sorted(rm.name for rm in c.search_registered_models())
        raise PredictCliError(f"--model {uri}: no registered model {name!r} in {tracking}; "
                              f"known: {', '.join(known) or 'none'}") from None
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise PredictCliError(f"--model {uri}: {name} has no {what}") from None
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=c.get_model_version_download_uri(name, mv.version), dst_path=str(dst / uuid.uuid4().hex),
        tracking_uri=tracking))
    folder = adapter_folder(local)
    if folder is not None:
        return ModelSource(uri, name, str(mv.version), folder)
    raise PredictCliError(f"--model {uri}: version {mv.version} holds neither an MLflow model with a Lingo adapter "
                          "nor an adapter folder (lingo.json); register a version from a Lingo sweep")


def adapter_folder(local: Path) -> Path | None:
    """The export inside a downloaded version: the pyfunc model's adapter artifact (where its MLmodel
    says), or the folder itself for versions registered before pyfunc models existed."""
    from orchestrator import tracking as trk  # MLflow: heavy, see the note at the top

    if (local / "MLmodel").is_file():
        conf = yaml.safe_load((local / "MLmodel").read_text()) or {}
        art = (conf.get("flavors", {}).get("python_function", {}).get("artifacts") or {}).get(trk.ADAPTER_ARTIFACT)
        folder = local / art["path"] if art else None
    else:
        folder = local
    return folder if folder is not None and (folder / "lingo.json").is_file() else None


def _columns(predictor, table, probs) -> dict[str, object]:
    from lingo_core.predict import prediction_columns  # torch: heavy, see the note at the top

    out: dict[str, object] = {"id": table.column("id"), "sequence": table.column("sequence")}
    for adapter, p in zip(predictor.adapters, probs, strict=True):
        out.update(prediction_columns(adapter.label_names, p, prefix=f"{adapter.task}."))
    return out


def run(args: argparse.Namespace) -> Path:
    # pyarrow, tqdm and torch: heavy, see the note at the top
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from lingo_core.artifacts import read_meta
    from lingo_core.data.sequences import read_sequences
    from lingo_core.predict import Predictor, PredictSettings

    out = Path(args.output)
    if out.suffix != ".parquet":
        raise PredictCliError(f"--output {out}: expected a .parquet file name")
    if not out.parent.is_dir():
        raise PredictCliError(f"--output {out}: folder {out.parent} does not exist")
    try:
        settings = PredictSettings(args.batch_size, args.device)
    except ValueError as e:
        raise PredictCliError(str(e)) from None
    table = read_sequences(args.input)  # bad input fails before any model is fetched or loaded
    uri = tracking_uri(args.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="lingo-predict-") as tmp:
        sources = [resolve(u, uri, Path(tmp)) for u in args.model]
        tasks = [read_meta(s.adapter_dir)["task"] for s in sources]
        if len(set(tasks)) < len(tasks):
            dup = next(t for t in tasks if tasks.count(t) > 1)
            raise PredictCliError(f"two --model give task {dup!r}; predict one model per task in a call")
        predictor = Predictor([s.adapter_dir for s in sources], settings,
                              base_model=args.base_model, names=[s.uri for s in sources])
        with tqdm(total=table.num_rows, desc="predict", unit="seq", disable=args.no_progress, file=sys.stderr) as bar:
            probs = predictor.predict(table.column("sequence").to_pylist(), progress=bar.update)
    result = pa.table(_columns(predictor, table, probs))
    return atomic_file(out, lambda tmp: pq.write_table(result, tmp))  # readers see the old or the whole new file


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # after parsing, so --help answers at once: torch (lingo_core.predict), pyarrow (lingo_core.data)
    from lingo_core.data.errors import DataError
    from lingo_core.predict import PredictError

    try:
        out = run(args)
    except (PredictCliError, PredictError, DataError, FileNotFoundError) as e:
        return fail("lingo predict", e)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
