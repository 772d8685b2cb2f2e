"""Flower ServerApp of the coordinating center: a thin shell around server.federation."""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.http_grid import HttpGrid

from server.federation import run_federation
from server.prompt_grid import PromptGrid


def build_server_app(bound_run_config: dict[str, Any] | None = None) -> ServerApp:
    """`bound_run_config` is set by `fedcare simulate` (the simulation API has no run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if isinstance(grid, HttpGrid):
            grid = PromptGrid(grid)  # Flower's deployment Grid pulls replies every 3 s
        run_federation(grid, bound_run_config or dict(context.run_config), context)

    return app


app = build_server_app()
