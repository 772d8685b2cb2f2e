"""The HTML pages fedcare writes come from the Jinja2 templates in shared/templates/, autoescaped.

Values reach a page only through a template's {{ }}: autoescaping escapes every one of them (a site
name, a config value, an explanation's text), so no data turns into markup. Templates are package
data: a Flower app bundle carries *.py only, so a site renders with the templates of its own install.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


@cache
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,  # a missing value is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> str:
    """The text of `template` (a file name under shared/templates/) filled with `context`."""
    return environment().get_template(template).render(**context)
