"""Test doubles for packages that cannot be installed on a CPU machine. Each lives in a folder named like
the real package (fakes/vllm is `vllm`); a test puts this folder on sys.path for its own duration only."""
