"""Custom reward components used by the tests (docs/training.md's worked example is the first one)."""


def brevity(completions, **kwargs):
    """Reward short answers: 1.0 at no characters, 0.0 at 2,000 or more."""
    return [max(0.0, 1.0 - len(c) / 2000) for c in completions]


def cites_gold(completions, answer_label, **kwargs):
    return [1.0 if gold and f"({gold})" in c else 0.0 for c, gold in zip(completions, answer_label)]


def wrong_signature(text):
    return [0.0]


def explodes(completions, **kwargs):
    raise RuntimeError("boom")


def fails_on_empty(completions, **kwargs):
    """Raises when any completion of the batch is empty: a component with a bug that odd samples trip."""
    if any(not c for c in completions):
        raise ValueError("empty completion")
    return [1.0] * len(completions)
