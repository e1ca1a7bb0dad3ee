"""Start or join Ray, once per process, as the config says."""

from __future__ import annotations

import logging
import os
import sys

import ray

from medmcqa_ray import console
from medmcqa_ray.config import RaySection



def ensure_ray(cfg: RaySection) -> None:
    """Join ray.address or RAY_ADDRESS (as under `ray job submit`) when given, else start local Ray."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Workers' output (Ray Train's controller, TRL's per-step dicts, model loading bars) stays in Ray's
    # session logs unless MEDMCQA_VERBOSE: the terminal shows our bars and tables.
    if address:
        ray.init(address=address, log_to_driver=console.verbose())
        print(f"Ray: joined Ray cluster at {address}", flush=True)
    else:
        # address="local": a new Ray of our own, as the config says, even where `ray start` left a cluster
        # running on this machine (plain ray.init() would join that one and refuse ray.num_cpus).
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=cfg.include_dashboard,
                 log_to_driver=console.verbose())
        print(f"Ray: started local Ray ({ray.cluster_resources().get('CPU'):g} CPUs)", flush=True)
    configure_ray_data(cfg.data_resource_reservation)
    console.quiet_libraries()  # after ray.data's import, which sets its loggers up


class _NoDataContextDump(logging.Filter):
    """Ray Data logs its whole DataContext, several kilobytes on one line, as each dataset starts executing
    (at DEBUG, which its ray-data.log keeps); no option turns that line off alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Data Context for dataset")


def configure_ray_data(resource_reservation: bool = False) -> None:
    """Ray Data draws progress bars on a terminal; elsewhere (CI, job logs) it would log every operator
    every few seconds, drowning our own lines, so there it only does so when MEDMCQA_VERBOSE is set.
    A failing map raises our own error (DataFileError naming file:line), not a generic UDF failure.
    Datasets execute in this process (download, prep, eval), so its logger is the one to filter."""
    executor_log = logging.getLogger("ray.data._internal.execution.streaming_executor")
    if not any(isinstance(f, _NoDataContextDump) for f in executor_log.filters):
        executor_log.addFilter(_NoDataContextDump())  # a logger's filter drops the record for every handler
    ctx = ray.data.DataContext.get_current()
    ctx.raise_original_map_exception = True
    ctx.op_resource_reservation_enabled = resource_reservation
    if not sys.stdout.isatty() and not console.verbose():
        ctx.enable_progress_bars = False
