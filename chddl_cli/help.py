"""Help text with options in sections (general first, then one per method or module)."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand


class SectionedCommand(TyperCommand):
    """A command whose ``--help`` lists options under the section (``rich_help_panel``)
    each was declared with; options without one come first, under "Options"."""

    def format_options(self, ctx: typer.Context, formatter: Any) -> None:
        args, sections = [], {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append(record)
            else:
                sections.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)
