"""`medmcqa-ray export --head sft|grpo [--out DIR] [--push REPO]`: a head's LoRA adapter merged into its base
model and written as a Hugging Face model folder that transformers and vLLM load with no PEFT and no
medmcqa-ray: `model.safetensors`, the tokenizer with the chat template training used, a greedy
`generation_config.json`, the model card (`README.md`, model_card.py) and `export_manifest.json`.

The merge is PEFT's `merge_and_unload`, in the base model's dtype: `model.dtype` when the config names one,
else the checkpoint's own (so a bf16 checkpoint stays bf16, whatever device training ran on). It runs with
transformers on the CPU, even where training used Unsloth: adding two matrices needs neither.

Bad input fails before the base model loads: no adapter where `adapters.<head>` points (or this pipeline's
checkpoint), a target folder holding something else, an unusable `--push`. The export is recorded as an
`export` run in MLflow (its small files, tagged with the head and the adapter's checksum) when tracking is on.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict

from medmcqa_ray import __version__
from medmcqa_ray.adapters import adapter_checksum, read_adapter
from medmcqa_ray.config import Config
from medmcqa_ray.errors import StageError
from medmcqa_ray.layout import layout
from medmcqa_ray.model_card import model_card
from medmcqa_ray.models import load_tokenizer, local_model_path

log = logging.getLogger(__name__)
MANIFEST_FILE = "export_manifest.json"
Head = Literal["sft", "grpo"]


class ExportManifest(BaseModel):
    """export_manifest.json: what the folder holds and what it was made from."""

    model_config = ConfigDict(extra="forbid")
    head: Head
    adapter: str
    adapter_sha: str
    """adapters.adapter_checksum of the merged adapter: the tag its registered MLflow version carries too."""
    base_model: str
    """model.name as configured (a hub id, a folder, or an embedded model's name)."""
    base_revision: Optional[str] = None
    dtype: str
    files: dict[str, int]
    """Each file of the folder (this one excepted) and its size in bytes."""
    medmcqa_ray_version: str
    created: str


class Exported(BaseModel):
    """What an export did: the folder, its manifest, and where MLflow and the hub got it."""

    folder: str
    manifest: ExportManifest
    mlflow_page: Optional[str] = None
    """run_page of the export run ("" when tracking went offline; None when tracking is off)."""
    pushed: Optional[str] = None
    """The hub URL of the commit, with --push."""

    def summary(self) -> str:
        """The console's closing lines: where the folder is, what it holds, how to load it."""
        m, folder = self.manifest, self.folder
        weights = sum(size for name, size in m.files.items() if name.endswith(".safetensors"))
        lines = [f"exported the {m.head} head ({m.base_model} + adapter {m.adapter_sha[:12]}, {m.dtype}) to {folder}",
                 f"  weights {weights / 2**20:.1f} MiB; "
                 + ", ".join([*(n for n in m.files if not n.endswith(".safetensors")), MANIFEST_FILE]),
                 f"  transformers: AutoModelForCausalLM.from_pretrained({folder!r}); vLLM: vllm serve {folder}",
                 "  README.md (the model card) shows the prompt format."]
        return "\n".join(lines + ([f"  pushed: {self.pushed}"] if self.pushed else []))


def _found(path: Path) -> str:
    if not path.exists():
        return "nothing there"
    if not path.is_dir():
        return "a file, not a folder"
    names = sorted(p.name for p in path.iterdir())
    return "an empty folder" if not names else "a folder holding " + ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def check_adapter(cfg: Config, head: Head) -> Path:
    """The head's adapter folder, or an error naming the key and what is there instead."""
    paths = layout(cfg)
    adapter = paths.adapter(head)
    if not ((adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()):
        hint = "" if paths.configured_adapter(head) else f"; run the {head} stage first, or set adapters.{head}"
        raise StageError(f"adapters.{head}: no PEFT adapter (adapter_config.json and adapter_model.safetensors) at "
                         f"{adapter}: found {_found(adapter)}{hint}")
    return adapter


def check_out(out: Path) -> None:
    """The target is new, empty, or an earlier export (replaced): never a folder of someone's other files."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
        raise StageError(f"--out {out}: found {_found(out)}, not an earlier export (no {MANIFEST_FILE}); "
                         "name a new or empty folder")
    nearest = next(p for p in (out.parent, *out.parent.parents) if p.exists())
    if not (nearest.is_dir() and os.access(nearest, os.W_OK)):
        raise StageError(f"--out {out}: {nearest} cannot be written")


def hub_token(cfg: Config) -> Optional[str]:
    """model.hub_token, else what huggingface_hub finds itself (HF_TOKEN, `hf auth login`)."""
    from huggingface_hub import get_token

    return cfg.model.hub_token.get_secret_value() if cfg.model.hub_token else get_token()


def check_push(cfg: Config, repo: str) -> None:
    from huggingface_hub import is_offline_mode
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise StageError(f"--push {repo!r}: not a hub repository id ({str(e).splitlines()[0]})") from None
    if is_offline_mode():
        raise StageError(f"--push {repo}: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so the hub cannot be reached; "
                         f"export without --push and upload the folder later (`hf upload {repo} FOLDER`)")
    if not hub_token(cfg):
        raise StageError(f"--push {repo}: no hub token; set model.hub_token or HF_TOKEN, or run `hf auth login`")


def _tied_modules(model: Any) -> set[str]:
    """The module names of the input and output embeddings when the model ties them (one tensor)."""
    inp, outp = model.get_input_embeddings(), model.get_output_embeddings()
    if outp is None or inp.weight is not outp.weight:
        return set()
    return {name for name, module in model.named_modules() if module is inp or module is outp}


def merged_model(cfg: Config, head: Head, adapter: Path, base_path: str, adapter_weights: dict) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = cfg.model
    dtype = "auto" if m.dtype == "auto" else getattr(torch, m.dtype)  # auto: the checkpoint's own dtype
    token = m.hub_token.get_secret_value() if m.hub_token else None
    base = AutoModelForCausalLM.from_pretrained(base_path, revision=m.revision, dtype=dtype, token=token,
                                                trust_remote_code=m.trust_remote_code)
    # Merged into a tensor the model ties, a LoRA on lm_head would change the input embeddings as well:
    # the merged model would not be the adapter head.
    tied = sorted(t for t in _tied_modules(base) if any(f".{t}." in key for key in adapter_weights))
    if tied:
        raise StageError(f"adapters.{head}: the adapter at {adapter} changes {', '.join(tied)}, which {m.name} ties to "
                         "its other embedding; merged, the change would land in both. Train without it in "
                         "sft.lora.target_modules, or serve the adapter unmerged")
    try:
        model = PeftModel.from_pretrained(base, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:
        raise StageError(f"adapters.{head}: the adapter at {adapter} does not fit model.name={m.name} "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    log.info("export: merging %s into %s (%s)", adapter, m.name, base.dtype)
    return model.merge_and_unload().eval()


def greedy_generation_config(model: Any, tokenizer: Any, cfg: Config) -> Any:
    """Greedy decoding with the eval's budget, stopping at every end token the model or tokenizer names
    (a chat model's turn end and its text end can differ), padding with the tokenizer's pad token."""
    from transformers import GenerationConfig

    ends = model.generation_config.eos_token_id
    ends = [ends] if isinstance(ends, int) else list(ends or [])
    ends += [tokenizer.eos_token_id] if tokenizer.eos_token_id not in ends else []
    return GenerationConfig(do_sample=False, max_new_tokens=cfg.eval.max_new_tokens, eos_token_id=ends,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    # transformers saves the tokenizer's init arguments, not attributes set since: the left padding batched
    # generation needs is kept only as an argument; how this machine loaded it (local files) is no part of it.
    tokenizer.init_kwargs["padding_side"] = tokenizer.padding_side
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(folder)


def write_folder(cfg: Config, head: Head, adapter: Path, sha: str, weights: dict, tmp: Path) -> ExportManifest:
    from transformers.utils import logging as hf_logging

    base_path = local_model_path(cfg.model)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # seconds of loading and writing: the log line says it
    try:
        model = merged_model(cfg, head, adapter, base_path, weights)
        tokenizer = load_tokenizer(cfg.model)  # with the chat template and pad token training used
        model.generation_config = greedy_generation_config(model, tokenizer, cfg)
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    dtype = str(model.dtype).removeprefix("torch.")
    (tmp / "README.md").write_text(model_card(cfg, head, adapter, sha, dtype, Path(base_path)))
    manifest = ExportManifest(head=head, adapter=str(adapter), adapter_sha=sha, base_model=cfg.model.name,
                              base_revision=cfg.model.revision, dtype=dtype,
                              files={p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()},
                              medmcqa_ray_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    # transformers writes the weights owner-only (0600); a folder made to be served is readable as the
    # umask allows, like every other file written here.
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.iterdir():
        path.chmod(0o666 & ~umask)
    return manifest


def record(cfg: Config, folder: Path, manifest: ExportManifest) -> Optional[str]:
    """An `export` run in MLflow with the folder's small files (not the weights: the registered adapter
    version and this folder's manifest say how to remake them), tagged with the head and adapter checksum."""
    from medmcqa_ray.tracking import Tracker

    tracker = Tracker(cfg)
    if not tracker.enabled:
        return None
    from medmcqa_ray.tracking.store import ADAPTER_SHA_TAG

    with tracker.stage_run("export") as run_id:
        tracker.set_tags({"medmcqa_ray.head": manifest.head, ADAPTER_SHA_TAG: manifest.adapter_sha,
                          "medmcqa_ray.export_dir": str(folder)})
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix != ".safetensors":
                tracker.log_artifact(path, "export")
    return tracker.page(run_id)


def push(cfg: Config, folder: Path, repo: str, head: Head) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=hub_token(cfg))
    try:
        api.create_repo(repo, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=f"medmcqa-ray export of the {head} head")
    except Exception as e:  # noqa: BLE001 - the network, the hub or a permission: one line, the folder kept
        raise StageError(f"--push {repo}: the upload failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         f"the export is in {folder}") from None
    return str(getattr(commit, "commit_url", commit))


def export(cfg: Config, head: Head, out: Optional[Path] = None, push_to: Optional[str] = None) -> Exported:
    """Merge `head`'s adapter into the base model and write the folder (`out`, default layout's export_dir)."""
    out = Path(out or layout(cfg).export_dir(head)).absolute()
    adapter = check_adapter(cfg, head)
    check_out(out)
    if push_to:
        check_push(cfg, push_to)
    weights = read_adapter(adapter)[1]
    sha = adapter_checksum(weights)
    # Written beside and renamed into place: a failed export never leaves half a folder where one stood.
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = write_folder(cfg, head, adapter, sha, weights, tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("export: %s head written to %s", head, out)
    page = record(cfg, out, manifest)
    pushed = push(cfg, out, push_to, head) if push_to else None
    return Exported(folder=str(out), manifest=manifest, mlflow_page=page, pushed=pushed)
