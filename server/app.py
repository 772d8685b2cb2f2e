"""Flower ServerApp of the coordinating center: a thin shell around server.federation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import http_grid
from flwr.superlink.grid.http_grid import HttpGrid

from server.federation import run_federation
from server.packing_grid import PackingGrid
from server.prompt_grid import NodeSnapshotGrid, PromptGrid
from shared.flower_object_pulls import prompt_object_pulls


def build_server_app(bound_run_config: Mapping[str, Any] | None = None,
                     wrap_grid: Callable[[Grid], Grid] | None = None) -> ServerApp:
    """For an in-process simulation (`fedcare simulate`): `bound_run_config`, the run config (else the context's),
    and `wrap_grid`, e.g. a Grid that reports progress."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        deployment = isinstance(grid, HttpGrid)
        grid = PackingGrid(grid)  # one packed record per message on the wire (sites unpack in content_packing_mod)
        if wrap_grid:
            grid = wrap_grid(grid)
        elif deployment:
            # Flower's deployment Grid pulls replies every 3 s; a SuperNode answers one message at a time, in order
            grid = PromptGrid(NodeSnapshotGrid(grid), sites_answer_in_order=True)
            prompt_object_pulls(http_grid, "pull_objects")  # a reply's arrays arrive just after the reply
        run_federation(grid, bound_run_config or context.run_config, context)

    return app


app = build_server_app()
