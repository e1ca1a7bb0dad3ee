"""Start or join Ray, once per process, as the config says."""

from __future__ import annotations

import logging
import os
import sys

import ray

from medmcqa_ray.config import RayConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RayConfig) -> None:
    """Join ray.address or RAY_ADDRESS (as under `ray job submit`) when given, else start local Ray."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined Ray cluster at %s", address)
    else:
        # The dashboard serves Ray's state API, which Ray Train's controller and our tests query.
        ray.init(num_cpus=cfg.num_cpus, log_to_driver=True)
        log.info("started local Ray (%s CPUs)", ray.cluster_resources().get("CPU"))
    configure_ray_data(cfg.data_resource_reservation)


def configure_ray_data(resource_reservation: bool = False) -> None:
    """Ray Data draws progress bars on a terminal; elsewhere (CI, job logs) it would log every operator
    every few seconds, drowning our own lines, so there it only does so when MEDMCQA_VERBOSE is set.
    A failing map raises our own error (DataFileError naming file:line), not a generic UDF failure."""
    ctx = ray.data.DataContext.get_current()
    ctx.raise_original_map_exception = True
    ctx.op_resource_reservation_enabled = resource_reservation
    if not sys.stdout.isatty() and not os.environ.get("MEDMCQA_VERBOSE"):
        ctx.enable_progress_bars = False
