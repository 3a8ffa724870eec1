"""The MLflow pyfunc model logged by `tracking.tracker.log_best_model` ("models from code": no pickle).

MLflow copies this file into the logged model and runs it on load. Its two artifacts are the run config
YAML ("config": the `model:` section rebuilds the network, without pretrained CLIP weights) and the trained
weights ("weights": a safetensors file). Loading needs promptswitch installed.

    model = mlflow.pyfunc.load_model("models:/promptswitch@best")
    embeddings = model.predict(pd.DataFrame({"caption": ["a dog runs on the beach"]}))

`predict` returns one L2-normalised text embedding (a list of floats) per caption. Video embeddings need
decoded frames: use `promptswitch eval` for those.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel

BATCH_SIZE = 256


class PromptSwitchTextEncoder(PythonModel):
    """Captions -> text embeddings of a trained Prompt Switch model, on the CPU in float32."""

    def load_context(self, context) -> None:
        import torch
        from safetensors.torch import load_model

        from model import build_model
        from orchestrator.tracking.tracker import model_config_from_yaml

        config = model_config_from_yaml(Path(context.artifacts["config"]).read_text())
        # The trained weights replace everything: never read the CLIP weights the run started from.
        config = dataclasses.replace(config, pretrained=None)
        model = build_model(config)
        load_model(model, context.artifacts["weights"], strict=True, device="cpu")
        self.model = model.eval()
        self._torch = torch

    def predict(self, context, model_input, params=None) -> list[list[float]]:
        from model import tokenize

        captions = _captions(model_input)
        out: list[list[float]] = []
        with self._torch.inference_mode():
            for start in range(0, len(captions), BATCH_SIZE):
                tokens = tokenize(captions[start : start + BATCH_SIZE])
                out.extend(self.model.encode_text(tokens).float().tolist())
        return out


def _captions(model_input) -> list[str]:
    """A DataFrame's "caption" column (also accepted: a Series, a list of strings or one string)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "caption" not in model_input.columns:
            raise ValueError(f"expected a 'caption' column, got columns {list(model_input.columns)}")
        model_input = model_input["caption"]
    if isinstance(model_input, str):
        model_input = [model_input]
    captions = list(model_input)
    bad = [c for c in captions if not isinstance(c, str)]
    if bad:
        raise ValueError(f"captions must be strings, got {bad[:3]!r}")
    return captions


mlflow.models.set_model(PromptSwitchTextEncoder())
