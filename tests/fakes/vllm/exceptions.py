"""Fake vllm.exceptions: validation errors are not ValueErrors in vLLM 0.33."""


class VLLMError(Exception):
    pass


class VLLMClientError(VLLMError):
    pass


class VLLMValidationError(VLLMClientError):
    pass
