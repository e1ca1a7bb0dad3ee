"""Every stage in order (download, prep, sft, grpo, eval): what `ray job submit` runs.

    ray job submit --working-dir . -- python jobs/full.py --config configs/cluster.yaml [key.sub=value ...]
    python jobs/full.py --config configs/local.yaml          # local Ray, as `make demo` does

The same `--config` files, overrides and `--force` as `medmcqa-ray all`. Under `ray job submit` (or with
RAY_ADDRESS / ray.address set) it joins that cluster; otherwise it starts local Ray. Re-running it,
or re-submitting a failed job, skips the stages whose manifest matches the config and resumes SFT or
GRPO from their last Ray Train checkpoint. Ends with the base/SFT/GRPO accuracy table and the
`mlflow ui` command that opens the run.
"""

import sys
from pathlib import Path

# The submitted working directory's code, not whatever copy of the package is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medmcqa_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["all", *sys.argv[1:]]))
