"""The LA-DNN model as an MLflow pyfunc: image bytes in, COVID and lesion probabilities out.

The weights travel as safetensors and the architecture as JSON, so loading a registered model never
unpickles code from the artifact store.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from safetensors.torch import load_file, save_file

import ladnn
from ladnn.data.images import normalise_image
from ladnn.data.lesions import LESIONS
from ladnn.models.ladnn import LADNN, build_model
from ladnn.training.images import load_image_tensor, to_model_input

__all__ = [
    "LadnnPyfunc",
    "MODEL_SIGNATURE",
    "OUTPUT_COLUMNS",
    "save_model_files",
    "load_model_files",
    "load_logged_model",
    "log_pyfunc_model",
]

OUTPUT_COLUMNS = ("covid_probability", *LESIONS, "covid_positive")
SERVED_VERSION_ENV = "LADNN_SERVED_MODEL_VERSION"

MODEL_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.binary, "image")]),
    outputs=Schema(
        [ColSpec(DataType.double, "covid_probability")]
        + [ColSpec(DataType.double, lesion) for lesion in LESIONS]
        + [ColSpec(DataType.long, "covid_positive")]
    ),
)


def save_model_files(model: LADNN, spec: dict[str, Any], folder: Path) -> dict[str, str]:
    """Write `weights.safetensors` and `model.json` into `folder`; return them as pyfunc artifacts."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "weights.safetensors"
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    save_file(state, str(weights))
    description = folder / "model.json"
    description.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return {"weights": str(weights), "model_spec": str(description)}


def load_model_files(weights: str | Path, description: str | Path) -> tuple[LADNN, dict[str, Any]]:
    spec = json.loads(Path(description).read_text(encoding="utf-8"))
    model, _ = build_model(spec["backbone"], spec["variant"], pretrained=False, drop_rate=0.0)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return model, spec


def load_logged_model(artifact_uri: str) -> tuple[LADNN, dict[str, Any]]:
    """Download a logged LA-DNN model (`runs:/...` or `models:/...`) and rebuild its network.

    Raises `FileNotFoundError` when the artifacts lack `weights.safetensors` or `model.json`.
    """
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=scratch)
        )
        weights = folder / "artifacts" / "weights.safetensors"
        description = folder / "artifacts" / "model.json"
        if not weights.is_file() or not description.is_file():
            raise FileNotFoundError(
                f"{artifact_uri} is not an LA-DNN model: artifacts/weights.safetensors or "
                "artifacts/model.json is missing"
            )
        return load_model_files(weights, description)


def _image_bytes(value: Any, row: int) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"row {row}: image is a string but not valid base64") from err
    raise ValueError(f"row {row}: image must be bytes or base64 text, got {type(value).__name__}")


class LadnnPyfunc(mlflow.pyfunc.PythonModel):
    """Score chest-CT slices given as encoded image bytes (PNG, JPEG, ...) in column `image`."""

    def load_context(self, context) -> None:
        self.model, self.spec = load_model_files(
            context.artifacts["weights"], context.artifacts["model_spec"]
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise ValueError(
                "input must be a DataFrame with a column 'image' of encoded image bytes"
            )
        size = int(self.spec["image_size"])
        pixels = []
        for row, value in enumerate(model_input["image"].tolist()):
            name = f"row {row}"
            normalised = normalise_image(_image_bytes(value, row), name)
            pixels.append(load_image_tensor(normalised.image, size))
        batch = to_model_input(
            torch.stack(pixels), tuple(self.spec["mean"]), tuple(self.spec["std"])
        )
        with torch.no_grad():
            probabilities = torch.sigmoid(self.model(batch))
            if self.spec.get("tta"):
                mirrored = torch.sigmoid(self.model(torch.flip(batch, dims=[3])))
                probabilities = (probabilities + mirrored) / 2
        probabilities = probabilities.numpy().astype(np.float64)
        result = pd.DataFrame({"covid_probability": probabilities[:, 0]})
        for index, lesion in enumerate(LESIONS, start=1):
            result[lesion] = probabilities[:, index] if probabilities.shape[1] > 1 else math.nan
        threshold = float(self.spec["threshold"])
        result["covid_positive"] = (result["covid_probability"] >= threshold).astype("int64")
        # `ladnn serve` names the registered version it serves, so every response records
        # which model produced it.
        served = os.environ.get(SERVED_VERSION_ENV)
        if served:
            result["model_version"] = served
        return result


def log_pyfunc_model(
    model: LADNN, spec: dict[str, Any], folder: Path, input_example: pd.DataFrame
) -> mlflow.models.model.ModelInfo:
    """Log the model to the active run under the name `model`."""
    artifacts = save_model_files(model, spec, folder)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts=artifacts,
        signature=MODEL_SIGNATURE,
        input_example=input_example,
        code_paths=[str(Path(ladnn.__file__).parent)],
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            "timm",
            "safetensors",
            "pillow",
            "pandas",
        ],
    )
