"""Flower ServerApp of the coordinating center: a thin shell around server.federation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation


def build_server_app(bound_run_config: Mapping[str, Any] | None = None,
                     wrap_grid: Callable[[Grid], Grid] | None = None) -> ServerApp:
    """For an in-process simulation (`fedcare simulate`): `bound_run_config`, the run config (else the context's),
    and `wrap_grid`, e.g. a Grid that reports progress."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(wrap_grid(grid) if wrap_grid else grid, bound_run_config or context.run_config, context)

    return app


app = build_server_app()
