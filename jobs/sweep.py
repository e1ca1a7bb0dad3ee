"""A Ray Tune sweep of reward weights (download, prep and sft first, skipped when done): what
`ray job submit` runs for a sweep.

    ray job submit --working-dir . -- python jobs/sweep.py --config configs/sweep.yaml
    python jobs/sweep.py --config configs/sweep.yaml sweep.num_samples=4

The same `--config` files and overrides as `medmcqa-ray`. Ends with the trials' table and writes
output_dir/sweeps/<sweep.name>/best.yaml, a config overlay for jobs/full.py. Run again after an
interruption, it restores the sweep and does not run finished trials again.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working directory's code

from medmcqa_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sweep-all", *sys.argv[1:]]))
