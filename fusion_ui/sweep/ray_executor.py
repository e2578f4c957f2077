"""Sweeps beyond one machine: each cell is a Ray task on an actor that keeps its model warm.

``pip install "fusion-ui[ray]"`` (or ``pip install -e ".[ray]"`` in a checkout) adds Ray;
without it sweeps run locally and ``--ray`` says how to add it.

What travels to a worker is the cell's recipe (plain data) and the eval items, never weights:
merges are reproducible bit for bit from (seed, tensor, model), so each worker reads the models
itself and rebuilds exactly the merge the driver would have made. Results stream back in the
order cells finish and are written to the results CSV as they arrive, so a cancel or a lost
driver keeps every finished cell.

Pointing a sweep at a real cluster:

1. Every node needs fusion-ui (same version) and Ray installed (and the lm-eval extra, with
   the same task files under the same path, for a harness eval), and must read the models under
   the same paths (a shared file system such as NFS or a mounted bucket), or the recipe must
   name hub ids that each node can download (``HF_TOKEN`` in the nodes' environment for gated
   ones; the Hugging Face cache per node).
2. Start the cluster: ``ray start --head`` on one node, ``ray start --address HEAD_IP:6379`` on
   the others (or KubeRay / ``ray up cluster.yaml``).
3. Run from a node of the cluster: ``fusion-ui sweep sweep.yaml --ray auto``; from outside it,
   through Ray Client: ``fusion-ui sweep sweep.yaml --ray ray://HEAD_IP:10001``. The driver
   keeps the results CSV; the workers write nothing.

One actor per worker takes ``cpus_per_worker`` CPUs (default 1) and ``gpus_per_worker`` GPUs
(default 0; set 1 to merge and evaluate on a GPU per worker); ``workers`` defaults to as many
as the cluster's CPUs (or GPUs) allow, and never more than there are cells.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from fusion_ui.errors import FusionError
from fusion_ui.progress import CancelToken
from fusion_ui.sweep.cells import Cell
from fusion_ui.sweep.runner import CellResult, CellRunner, runner_arguments
from fusion_ui.sweep.spec import Sweep

IN_FLIGHT_PER_WORKER = 2  # a worker starts its next cell while the driver stores the last one


class RayUnavailableError(FusionError):
    """``--ray`` was asked for but Ray is not installed."""


def import_ray() -> ModuleType:
    """The ``ray`` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "Ray is not installed, so --ray cannot be used: install the ray extra with "
            '`pip install "fusion-ui[ray]"` (in a checkout: `pip install -e ".[ray]"`), or leave '
            "--ray out to run the sweep on this machine"
        ) from None
    return ray


def ray_cells(
    sweep: Sweep,
    cells: Sequence[Cell],
    *,
    address: str = "auto",
    device: str = "auto",
    workers: int | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    cancel: CancelToken | None = None,
    allow_large_deltas: bool = False,
) -> Iterator[CellResult]:
    """The cells' results in the order they finish, computed by Ray actors.

    Connects to ``address`` (``"auto"``, ``"local"`` to start Ray on this machine, or an address)
    unless Ray is already initialised in this process (then that session is used, and left up).
    Closing the iterator (a cancel, an error) kills the actors and cancels what is queued.
    """
    if not cells:
        return
    ray = import_ray()
    connected_here = False
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise FusionError(
                f"cannot reach a Ray cluster at {address!r}: {exc}; start one (`ray start --head`), "
                "give its address (--ray HEAD_IP:6379 or ray://HEAD_IP:10001), or use --ray local"
            ) from None
        connected_here = True
    actors: list[Any] = []
    pending: dict[Any, Any] = {}
    try:
        count = _worker_count(ray, workers, len(cells), cpus_per_worker, gpus_per_worker)
        worker_class = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(CellRunner)
        arguments = runner_arguments(sweep)
        actors = [
            worker_class.remote(**arguments, device=device, allow_large_deltas=allow_large_deltas)
            for _ in range(count)
        ]
        queue = iter(cells)

        def submit(actor: Any) -> None:
            if cancel is not None and cancel.cancelled:
                return
            cell = next(queue, None)
            if cell is not None:
                # plain data: the worker validates it into a Recipe again
                ref = actor.run.remote(cell.recipe.model_dump(mode="json"), cell.key)
                pending[ref] = actor

        for actor in actors:
            for _ in range(IN_FLIGHT_PER_WORKER):
                submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready[0])
            result = _get(ray, ready[0])
            submit(actor)
            yield result
    finally:
        for actor in actors:  # what is queued on an actor goes with it
            ray.kill(actor)
        if connected_here:
            ray.shutdown()


def _worker_count(
    ray: ModuleType, workers: int | None, cells: int, cpus: float, gpus: float
) -> int:
    if workers is not None:
        if workers < 1:
            raise FusionError(f"workers must be 1 or more, got {workers}")
        return min(workers, cells)
    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 1) // cpus) if cpus else cells
    if gpus:
        fits = min(fits, int(resources.get("GPU", 0) // gpus))
        if fits < 1:
            raise FusionError(
                f"the Ray cluster has no GPU for gpus_per_worker={gpus}; use 0 or add GPU nodes"
            )
    return max(1, min(fits, cells))


def _get(ray: ModuleType, ref: Any) -> CellResult:
    """The task's result; a fusion_ui error on the worker is raised here as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, FusionError):
            raise cause from None
        raise


__all__ = ["RayUnavailableError", "import_ray", "ray_cells"]
