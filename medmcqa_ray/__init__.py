"""medmcqa-ray: a Ray-distributed SFT + GRPO toolkit for medical multiple-choice reasoning."""

__version__ = "0.1.0"
