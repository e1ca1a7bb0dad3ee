"""The installed vLLM against two things that could drift from it: the calls medmcqa_ray/rollout/vllm_engine.py
makes (read from its source with `ast`), and tests/scaling/tp_standin/vllm, the stand-in that replaces vLLM
only where real vLLM cannot run here (a tensor-parallel engine over several GPUs, tests/scaling/multinode.py).
Every expected name, kind and default comes from the installed vllm (`inspect.signature`, dataclass and
msgspec fields, typing.get_args), never from constants in this file. No Ray, no model."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import sys
import typing
from pathlib import Path
from types import ModuleType

import pytest

from medmcqa_ray.rollout import vllm_engine

from ..conftest import REPO

vllm = pytest.importorskip("vllm")
msgspec = pytest.importorskip("msgspec")

STANDIN = REPO / "tests" / "scaling" / "tp_standin" / "vllm"
STANDIN_NAME = "tp_standin_vllm"  # its own name, so the real `vllm` stays what `import vllm` gives
ENGINE_SOURCE = Path(vllm_engine.__file__)

EMPTY = inspect.Parameter.empty
SIMPLE = (type(None), bool, int, float, str)


@pytest.fixture(scope="module")
def standin() -> typing.Iterator[typing.Callable[[str], ModuleType]]:
    """The stand-in loaded from its folder as package `tp_standin_vllm` (it imports its own modules
    relatively); removed from sys.modules afterwards."""
    spec = importlib.util.spec_from_file_location(STANDIN_NAME, STANDIN / "__init__.py",
                                                  submodule_search_locations=[str(STANDIN)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[STANDIN_NAME] = package
    try:
        spec.loader.exec_module(package)
        yield lambda sub: importlib.import_module(f"{STANDIN_NAME}.{sub}" if sub else STANDIN_NAME)
    finally:
        for name in [n for n in sys.modules if n == STANDIN_NAME or n.startswith(STANDIN_NAME + ".")]:
            del sys.modules[name]


def test_the_real_vllm_is_the_one_imported(standin):
    standin("")
    assert Path(vllm.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), vllm.__file__
    assert not Path(vllm.__file__).resolve().is_relative_to(STANDIN.parent)
    assert Path(standin("").__file__).resolve().is_relative_to(STANDIN)
    assert importlib.import_module("vllm") is vllm


# ----- helpers: the real vLLM's accepted names -----

def engine_args_fields() -> dict[str, dataclasses.Field]:
    from vllm.engine.arg_utils import EngineArgs

    return {f.name: f for f in dataclasses.fields(EngineArgs)}


def real_llm_params() -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(vllm.LLM.__init__).parameters)
    params.pop("self")
    return params


def llm_accepts(name: str) -> bool:
    """A keyword the real LLM(...) takes: one of its own parameters, or (through **kwargs) an EngineArgs field."""
    params = real_llm_params()
    if name in params and params[name].kind is not inspect.Parameter.VAR_KEYWORD:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and name in engine_args_fields()


def test_real_llm_passes_its_kwargs_to_engine_args():
    # What llm_accepts relies on: LLM.__init__'s **kwargs go into EngineArgs.
    source = inspect.getsource(vllm.LLM.__init__)
    assert "EngineArgs(" in source and "**kwargs" in source


def simple(value: typing.Any) -> bool:
    return type(value) in SIMPLE


def same_shape(standin_fn: typing.Callable, real_fn: typing.Callable) -> None:
    """Same parameter names, order and kinds; the same defaults where they are plain values, and a
    default on the same parameters otherwise."""
    ours, theirs = inspect.signature(standin_fn).parameters, inspect.signature(real_fn).parameters
    assert [(p.name, p.kind) for p in ours.values()] == [(p.name, p.kind) for p in theirs.values()], (ours, theirs)
    for name, p in ours.items():
        q = theirs[name]
        assert (p.default is EMPTY) == (q.default is EMPTY), name
        if simple(q.default):
            assert p.default == q.default and type(p.default) is type(q.default), (name, p.default, q.default)


# ----- the stand-in against the real vLLM -----

def test_standin_llm_init_takes_only_names_the_real_llm_takes(standin):
    params = dict(inspect.signature(standin("entrypoints.llm").LLM.__init__).parameters)
    params.pop("self")
    # Every accepted name is spelled out, so a name outside them fails in the stand-in too.
    assert all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params.values()), params
    real, fields = real_llm_params(), engine_args_fields()
    for name, p in params.items():
        assert llm_accepts(name), f"stand-in LLM({name}=...): the real vllm.LLM and EngineArgs have no {name!r}"
        if name in real:
            q = real[name]
            assert p.kind == q.kind, (name, p.kind, q.kind)
            real_default = q.default
        else:
            assert p.kind is p.KEYWORD_ONLY, name  # it reaches EngineArgs through **kwargs
            f = fields[name]
            real_default = f.default if f.default is not dataclasses.MISSING else EMPTY
        assert (p.default is EMPTY) == (real_default is EMPTY), name
        if simple(real_default):
            assert p.default == real_default, (name, p.default, real_default)


@pytest.mark.parametrize("method", ["generate", "sleep", "wake_up"])
def test_standin_llm_methods_match_the_real_ones(standin, method):
    same_shape(getattr(standin("entrypoints.llm").LLM, method), getattr(vllm.LLM, method))


@pytest.mark.parametrize("method", ["add_lora", "remove_lora"])
def test_standin_llm_engine_lora_calls_match_the_real_ones(standin, method):
    from vllm.v1.engine.llm_engine import LLMEngine

    same_shape(getattr(standin("entrypoints.llm").LLMEngine, method), getattr(LLMEngine, method))


def real_struct_fields(cls: type) -> dict[str, typing.Any]:
    """A msgspec.Struct's fields and defaults (EMPTY where there is none or a factory)."""
    return {f.name: (EMPTY if f.default is msgspec.NODEFAULT else f.default) for f in msgspec.structs.fields(cls)}


def standin_fields(cls: type) -> dict[str, typing.Any]:
    return {f.name: (EMPTY if f.default is dataclasses.MISSING else f.default) for f in dataclasses.fields(cls)}


def test_standin_sampling_params_fields_are_real_fields_with_real_defaults(standin):
    from vllm import SamplingParams

    real = real_struct_fields(SamplingParams)
    ours = standin_fields(standin("sampling_params").SamplingParams)
    for name, default in ours.items():
        assert name in real, name
        assert default == real[name], (name, default, real[name])
    # The engine sets only fields the stand-in has (and so the real one has).
    used = call_keywords(engine_tree(), "SamplingParams")
    assert used and used <= set(ours), used - set(ours)


def test_standin_lora_request_fields_equal_the_real_ones(standin):
    from vllm.lora.request import LoRARequest

    real = real_struct_fields(LoRARequest)
    ours = standin_fields(standin("lora.request").LoRARequest)
    assert list(ours) == list(real)
    assert ours == real


def test_standin_tokens_prompt_keys(standin):
    from vllm import TokensPrompt

    ours = standin("inputs").TokensPrompt
    assert ours.__required_keys__ == TokensPrompt.__required_keys__
    assert set(ours.__annotations__) <= set(TokensPrompt.__annotations__)
    assert standin("").TokensPrompt is ours and standin("").SamplingParams is standin("sampling_params").SamplingParams


def test_standin_outputs_are_prefixes_of_the_real_ones(standin):
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    outputs = standin("outputs")
    ours = list(standin_fields(outputs.CompletionOutput).items())
    assert ours == list(standin_fields(CompletionOutput).items())[:len(ours)]
    assert standin_fields(standin("logprobs").Logprob) == standin_fields(Logprob)
    ours_init = list(inspect.signature(outputs.RequestOutput.__init__).parameters.values())
    real_init = list(inspect.signature(RequestOutput.__init__).parameters.values())[:len(ours_init)]
    assert [(p.name, p.kind, p.default) for p in ours_init] == [(p.name, p.kind, p.default) for p in real_init]


def test_standin_generates_what_the_engine_reads(standin):
    """Without Ray (no executor backend): the stand-in's outputs go through the engine's own reader."""
    llm_module = standin("entrypoints.llm")
    llm = llm_module.LLM("model", enable_lora=True, max_model_len=64)
    params = standin("sampling_params").SamplingParams(n=2, max_tokens=3, logprobs=0)
    prompts = [standin("").TokensPrompt(prompt_token_ids=[1, 2, 3]), standin("").TokensPrompt(prompt_token_ids=[4])]
    outputs = llm.generate(prompts, params, lora_request=None, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == [[1, 2, 3], [4]]
    completions = [vllm_engine.to_completions(i, o, policy_version=0) for i, o in enumerate(outputs)]
    assert [[c.sample_index for c in group] for group in completions] == [[0, 1], [0, 1]]
    assert all(len(c.token_ids) == len(c.logprobs) <= 3 for group in completions for c in group)
    llm.sleep(level=1)
    with pytest.raises(RuntimeError, match="sleeping"):
        llm.generate(prompts, params)
    assert llm.wake_up() is True
    with pytest.raises(TypeError):
        llm.generate(["text prompts are not what the engine sends"], params)
    with pytest.raises(TypeError):
        llm_module.LLM("model", no_such_engine_arg=1)


# ----- the engine's source against the real vLLM -----

def engine_tree() -> ast.Module:
    return ast.parse(ENGINE_SOURCE.read_text(), filename=str(ENGINE_SOURCE))


def enclosing_function(tree: ast.Module, node: ast.AST) -> ast.FunctionDef:
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and any(n is node for n in ast.walk(fn)):
            inner = [f for f in ast.walk(fn) if f is not fn and isinstance(f, ast.FunctionDef)
                     and any(n is node for n in ast.walk(f))]
            if not inner:
                return fn
    raise LookupError(node)


def dict_keys(tree: ast.Module, value: ast.expr) -> set[str]:
    """The string keys of every dict literal in a `**value` argument; a name is looked up in its function's
    assignments (`memory: dict = ({...} if ... else {...})`)."""
    if isinstance(value, ast.Name):
        fn = enclosing_function(tree, value)
        assigned = [a.value for a in ast.walk(fn) if isinstance(a, (ast.Assign, ast.AnnAssign)) and a.value is not None
                    and any(isinstance(t, ast.Name) and t.id == value.id
                            for t in (a.targets if isinstance(a, ast.Assign) else [a.target]))]
        assert assigned, f"{value.id} is not assigned in {fn.name}"
        return set().union(*(dict_keys(tree, v) for v in assigned))
    keys = {k.value for d in ast.walk(value) if isinstance(d, ast.Dict) for k in d.keys
            if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    assert keys or isinstance(value, ast.Dict), f"cannot read the keys of **{ast.unparse(value)}"
    return keys


def calls_to(tree: ast.Module, name: str) -> list[ast.Call]:
    return [c for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == name]


def call_keywords(tree: ast.Module, name: str) -> set[str]:
    """Every keyword passed to `name(...)` in the tree, with the keys of dicts passed as **."""
    names: set[str] = set()
    for call in calls_to(tree, name):
        for kw in call.keywords:
            names |= {kw.arg} if kw.arg else dict_keys(tree, kw.value)
    return names


def test_engine_llm_keywords_are_accepted_by_the_real_vllm(standin):
    tree = engine_tree()
    [call] = calls_to(tree, "LLM")
    assert not call.args, "the engine passes LLM's arguments by name"
    keywords = call_keywords(tree, "LLM")
    # Both memory settings (the `memory` dict's two branches) and the ** of the executor backend are read.
    assert len(keywords) > len([k for k in call.keywords if k.arg]), keywords
    rejected = sorted(k for k in keywords if not llm_accepts(k))
    assert not rejected, f"vllm_engine.py passes LLM({rejected}), which vLLM {vllm.__version__} does not take"
    # The stand-in takes every one of them too (so multinode.py's engine is built with the engine's real call).
    standin_params = set(inspect.signature(standin("entrypoints.llm").LLM.__init__).parameters)
    assert keywords <= standin_params, keywords - standin_params


def test_engine_calls_on_llm_exist_in_the_real_vllm():
    """`self.llm.X(...)` and `self.llm.llm_engine.X(...)` in the engine: methods of the real classes, with
    keywords they take."""
    from vllm.v1.engine.llm_engine import LLMEngine

    targets = {"self.llm": vllm.LLM, "self.llm.llm_engine": LLMEngine}
    seen = set()
    for call in ast.walk(engine_tree()):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        owner = ast.unparse(call.func.value)
        if owner not in targets:
            continue
        method = getattr(targets[owner], call.func.attr, None)
        assert callable(method), f"{owner}.{call.func.attr}: no such method in vLLM {vllm.__version__}"
        inspect.signature(method).bind(None, *call.args, **{k.arg: None for k in call.keywords if k.arg})
        seen.add(f"{owner}.{call.func.attr}")
    assert {"self.llm.generate", "self.llm.llm_engine.add_lora"} <= seen, seen


def test_engine_sampling_and_lora_keywords_are_real_fields():
    from vllm import SamplingParams, TokensPrompt
    from vllm.lora.request import LoRARequest

    tree = engine_tree()
    for name, accepted in [("SamplingParams", set(real_struct_fields(SamplingParams))),
                           ("LoRARequest", set(real_struct_fields(LoRARequest))),
                           ("TokensPrompt", set(TokensPrompt.__annotations__))]:
        used = call_keywords(tree, name)
        assert used and used <= accepted, (name, used - accepted)


def test_engine_lora_ranks_are_vllms():
    from vllm.config import lora

    from medmcqa_ray.config import VLLM_LORA_RANKS

    assert VLLM_LORA_RANKS == typing.get_args(lora.MaxLoRARanks)


def test_engine_logprobs_mode_and_greedy_threshold_are_vllms():
    from vllm import sampling_params
    from vllm.config import model

    assert vllm_engine.LOGPROBS_MODE in typing.get_args(model.LogprobsMode)
    assert vllm_engine.GREEDY_EPS == sampling_params._SAMPLING_EPS
