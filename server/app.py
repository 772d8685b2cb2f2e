"""Flower ServerApp of the coordinating center: a thin shell around server.federation."""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation


def build_server_app(bound_run_config: dict[str, Any] | None = None) -> ServerApp:
    """`bound_run_config` is set by `fedcare simulate` (the simulation API has no run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, bound_run_config or dict(context.run_config), context)

    return app


app = build_server_app()
