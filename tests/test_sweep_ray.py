"""The Ray executor against the local one: a 2 x 3 sweep on the demo family gives the same table,
bit for bit (scores identical; times excluded), on a real local Ray (2 CPUs, node address
127.0.0.1, no dashboard), started here and stopped at the end.

Skipped when Ray is not installed (it is the optional ``ray`` extra: ``pip install -e ".[ray]"``;
CI does not install it). Ray 2.60 registers the node as 127.0.0.1 and requires its token for
every connection (its default), but some of its gRPC servers still listen on every interface
(``ss -ltnp`` while it runs); Ray has no setting that confines them, so run this test on a
machine whose firewall keeps those ports private.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

try:
    import ray
except ImportError:  # the extra is optional: the rest of the suite runs without it
    ray = None

from test_sweep import grid_spec, scores_only, write_sweep

from fusion_ui.errors import FusionError
from fusion_ui.sweep import load_sweep, run_sweep

pytestmark = pytest.mark.skipif(
    ray is None, reason='Ray is not installed (pip install -e ".[ray]")'
)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A real Ray on this machine: 2 CPUs, node address 127.0.0.1, no dashboard; stopped at the end."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_gives_the_local_table_bit_for_bit(local_ray: Any, tmp_path: Path) -> None:
    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    local_dir.mkdir()
    ray_dir.mkdir()
    local = run_sweep(load_sweep(write_sweep(local_dir, grid_spec())), device="cpu", threads=1)
    streamed: list[int] = []
    remote = run_sweep(
        load_sweep(write_sweep(ray_dir, grid_spec())),
        ray="auto",
        device="cpu",
        progress=lambda p: streamed.append(p.done),
    )
    assert remote.complete and remote.ran == 6
    assert streamed == [0, 1, 2, 3, 4, 5, 6]  # a report per cell, as results arrive
    pd.testing.assert_frame_equal(
        scores_only(remote.table), scores_only(local.table), check_exact=True
    )
    assert remote.best_recipe() == local.best_recipe()
    assert len(pd.read_csv(remote.path)) == 6  # streamed into the CSV
    assert local_ray.is_initialized()  # a session the caller started is left up


def test_a_workers_error_comes_back_as_itself(local_ray: Any, tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, grid_spec()))
    broken = sweep.recipe.model_copy(
        update={
            "models": [
                e.model_copy(update={"model": str(tmp_path / "gone")}) for e in sweep.recipe.models
            ]
        }
    )
    sweep = type(sweep)(
        spec=sweep.spec, recipe=broken, axes=sweep.axes, source=sweep.source, folder=sweep.folder
    )
    with pytest.raises(FusionError) as info:  # the model folder is missing, said on the worker
        run_sweep(sweep, ray="auto", device="cpu", workers=1)
    assert "gone" in str(info.value)


def test_the_apps_sweep_tab_runs_on_the_apps_ray_cluster(local_ray: Any, tmp_path: Path) -> None:
    from fusion_ui.app import Engine
    from fusion_ui.app.sweeps import AxisChoice
    from fusion_ui.recipe import load_recipe
    from fusion_ui.resources import demo_dir, demo_recipe

    recipe = load_recipe(demo_recipe("dare_ties"))
    axes = [AxisChoice("drop_rate", "0.5, 0.99")]
    tables = {}
    for ray_address in (None, "auto"):  # "auto": the session this module started
        state = tmp_path / str(ray_address)
        engine = Engine(demo_dir=demo_dir(), device="cpu", state_dir=state, export_root=state / "x", ray=ray_address)
        try:
            job = engine.sweeps.start("s", recipe, axes, skills=["upper", "shift"], items_per_skill=5,
                                      on_ray=ray_address is not None)
            tables[ray_address] = engine.context.wait(job).table
        finally:
            engine.close()
    pd.testing.assert_frame_equal(scores_only(tables["auto"]), scores_only(tables[None]), check_exact=True)
