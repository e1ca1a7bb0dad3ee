"""GPU memory planning: a model's architecture read offline (architecture.py), the memory of each phase
of a run (plan.py), and the plan against the card (check.py): `medmcqa-ray memory` and the load-time check."""
