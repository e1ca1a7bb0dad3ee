"""A trained adapter as an MLflow model: a pyfunc that loads the base model (the run's `model` section)
with the PEFT adapter over it and answers MedMCQA questions in the reasoning format.

`mlflow.pyfunc.load_model("models:/medmcqa-ray-grpo@best")` gives it back: its input is a DataFrame with
`question` and `options` (four strings), its output one row per question with the completion, the answer
letter read from it (None when none can be read) and whether the completion is in the exact format. The
signature says so (the model page shows it, and MLflow checks inputs against it); questions are answered
in batches of BATCH, greedily.
Loading needs this package installed (the model's code is medmcqa_ray's own) and the base model where
the section names it (a hub id, a local folder, or the embedded model)."""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.pyfunc import PythonModel
import pandas as pd

from medmcqa_ray.config import Config, FormatSection, ModelSection
from medmcqa_ray.tracking.store import client_env

BATCH = 8
INPUT_EXAMPLE = pd.DataFrame({"question": ["Scurvy is caused by deficiency of:"],
                              "options": [["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"]]})


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "question"), ColSpec(Array("string"), "options")]),
        outputs=Schema([ColSpec("string", "completion"), ColSpec("string", "answer", required=False),
                        ColSpec("boolean", "well_formatted")]))


# Imported by name: mlflow's __init__ binds `mlflow.pyfunc` to a LazyLoader, which mypy cannot read a class from.
class AdapterModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from peft import PeftModel

        from medmcqa_ray.models import load_model, load_tokenizer

        conf = context.model_config
        self.model_cfg = ModelSection.model_validate(conf["model"])
        self.format_cfg = FormatSection.model_validate(conf["format"])
        self.max_new_tokens = int(conf["max_new_tokens"])
        self.tokenizer = load_tokenizer(self.model_cfg)
        self.model = PeftModel.from_pretrained(load_model(self.model_cfg), context.artifacts["adapter"]).eval()

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        import torch

        from medmcqa_ray.formatting import extract_answer, generation_prompt, is_well_formatted, prompt_messages

        markers = self.format_cfg.markers
        questions = [(q, list(o)) for q, o in zip(model_input["question"], model_input["options"])]
        out = []
        for start in range(0, len(questions), BATCH):
            chunk = questions[start : start + BATCH]
            prompts = [generation_prompt(prompt_messages(q, o, self.format_cfg), self.tokenizer, markers) for q, o in chunk]
            # Left padding (load_tokenizer): every prompt ends where generation starts.
            ids = self.tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
            with torch.no_grad():
                generated = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                                pad_token_id=self.tokenizer.pad_token_id)
            texts = self.tokenizer.batch_decode(generated[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [{"completion": text, "answer": extract_answer(text, options, markers).letter,
                     "well_formatted": is_well_formatted(text, markers)} for text, (_, options) in zip(texts, chunk)]
        return pd.DataFrame(out, columns=["completion", "answer", "well_formatted"])


def _requirements() -> list[str]:
    # Stated, not inferred: MLflow's inference loads the model in a subprocess (a minute on CPU).
    return [f"{p}=={importlib.metadata.version(p)}" for p in ("mlflow", "torch", "transformers", "peft", "pandas")]


def save_adapter_model(adapter: Path, cfg: Config) -> Path:
    """The adapter saved as an MLflow pyfunc model in a new temporary folder (logged from there). The
    model section travels without its hub token: the loader reads HF_TOKEN where it needs one."""
    dest = Path(tempfile.mkdtemp(prefix="adapter-model-")) / "model"
    model_config = {"model": cfg.model.model_dump(mode="json", exclude={"hub_token", "cache_dir"}),
                    "format": cfg.format.model_dump(mode="json"), "max_new_tokens": cfg.eval.max_new_tokens}
    # Models from code (a file that names the model), not a pickled object: nothing to unpickle at load.
    with client_env():  # no progress bar for copying the adapter in
        mlflow.pyfunc.save_model(path=str(dest), python_model=str(Path(__file__).with_name("adapter_model_code.py")),
                                 artifacts={"adapter": str(adapter)}, model_config=model_config,
                                 pip_requirements=_requirements(), signature=signature(), input_example=INPUT_EXAMPLE)
    return dest
