"""Stand-in `vllm` for tensor-parallel placement tests only (see ../README.md): LLM, SamplingParams and
TokensPrompt with the real names and signatures (tests/rollout/test_vllm_standin.py compares them with the
installed vLLM). Modules import each other relatively, so the test can load this package under another name
next to the real one."""

from .entrypoints.llm import LLM
from .inputs import TokensPrompt
from .sampling_params import SamplingParams

__version__ = "0.0.0+tp-standin"
__all__ = ["LLM", "SamplingParams", "TokensPrompt"]
