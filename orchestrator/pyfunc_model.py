"""MLflow models-from-code file of a Lingo model (copied into every logged model; see mlflow_model.py).

MLflow executes this file on load instead of unpickling an object. It imports only `lingo_core` (shipped
in the model's code/ folder) and MLflow, so a model folder loads without the orchestrator package.
Loading reads the adapter artifact (the unchanged export: plain PEFT files, head, lingo.json), resolves
the base model by its recorded identity and checks its sha256 (lingo_core.predict.Predictor).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

ADAPTER_ARTIFACT = "adapter"  # key of the export in the model's artifacts; = orchestrator.tracking.ADAPTER_ARTIFACT
# (this file may not import orchestrator: only lingo_core travels with the model)


class LingoModel(PythonModel):
    def load_context(self, context) -> None:
        # torch + transformers: executing this file (MLflow does so when it saves the model, too) stays
        # light; they load with the model
        from lingo_core.predict import Predictor

        self.predictor = Predictor([context.artifacts[ADAPTER_ARTIFACT]])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from lingo_core.predict import prediction_columns  # loaded by load_context already; see there

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "sequence" not in frame.columns:
            raise ValueError(f"input needs a 'sequence' column; got columns {list(frame.columns)}")
        probs = self.predictor.predict(frame["sequence"].tolist())[0]
        out = pd.DataFrame(prediction_columns(self.predictor.adapters[0].label_names, probs))
        if "id" in frame.columns:  # echo the caller's keys so rows can be matched without relying on order
            out.insert(0, "id", frame["id"].astype(str).to_numpy())
        return out


mlflow.models.set_model(LingoModel())
