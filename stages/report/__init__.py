"""Stage ``report``: every artifact of a workspace as Markdown and a
self-contained HTML page (images embedded)."""

from __future__ import annotations

from pathlib import Path

from stages.artifacts import Workspace, log, recompute_hint
from stages.errors import ChddlError
from stages.outputs import refuse_unsafe, write_swapped
from stages.progress import NullProgress, Progress
from stages.report.inventory import (
    by_stage,
    condensed_section,
    costs_section,
    datasets_section,
    labels_section,
    summary_section,
)
from stages.report.page import Section, html_page, markdown_page
from stages.report.results import comparison_section, evaluation_sections, over_random_section, sweep_section

#: what a report folder holds: these two pages, and the figures they show under images/
REPORT_PAGES = ("report.md", "report.html")
FIGURE_SUFFIXES = (".png", ".svg")


def is_report(folder: Path) -> bool:
    """Whether ``folder`` holds a chddl report and nothing else (so replacing it loses no other file)."""
    if not (folder / "report.html").is_file():
        return False
    for path in folder.rglob("*"):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            return False
        if path.is_dir():
            if name != "images":
                return False
        elif not (
            name in REPORT_PAGES
            or (name.startswith("images/") and name.count("/") == 1 and path.suffix in FIGURE_SUFFIXES)
        ):
            return False
    return True


def run(workspace: Workspace, out_dir: Path | None = None, progress: Progress = NullProgress()) -> tuple[Path, Path]:
    """Write ``report.md`` (+ its figures as SVG files) and a self-contained
    ``report.html`` (figures as inline SVG); returns their paths."""
    workspace.check_exists()
    damaged = workspace.damaged()
    broken = {path for path, _ in damaged}
    # an artifact whose meta.yaml reads but whose tensors are corrupt is listed as damaged, not drawn from
    arts = [a for a in workspace.all() if a.path not in broken]
    if not arts and not damaged:
        raise ChddlError(
            f"workspace {workspace.root} holds no artifacts yet; run `chddl demo` or `chddl label PATH` first"
        )
    stages = by_stage(arts)
    sections: list[Section] = []
    if "dataset" in stages:
        sections.append(datasets_section(stages["dataset"]))
    if "labels" in stages:
        sections.append(labels_section(stages["labels"]))
    if "condensed" in stages:
        sections.append(condensed_section(stages["condensed"], workspace))
    paired = None
    if "evaluation" in stages:
        sections += evaluation_sections(stages["evaluation"], workspace)
        over_random = over_random_section(stages["evaluation"], workspace)
        if over_random is not None:
            sections.append(over_random)
        paired = comparison_section(stages["evaluation"], workspace)
        if paired is not None:
            sections.append(paired)
        sweep = sweep_section(stages["evaluation"], workspace)
        if sweep is not None:
            sections.append(sweep)
    sections.insert(0, summary_section(stages, workspace, paired))
    sections.append(costs_section(arts))
    if damaged:
        log.warning(
            f"the report skips {len(damaged)} damaged artifact(s), listed in its last section with the command "
            "that recomputes each"
        )
        sections.append(
            Section(
                "Skipped artifacts",
                header=["folder", "problem", "recompute with"],
                rows=[[str(path), reason.split(";")[0], recompute_hint(path.name)] for path, reason in damaged],
                text="Not in the tables above: each folder is damaged. The command that made it, run again with "
                "the same options and --force, replaces it.",
            )
        )
    if out_dir is not None:
        refuse_unsafe(Path(out_dir), example="--out report")
    out_dir = Path(out_dir) if out_dir is not None else workspace.root / "report"
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ChddlError(f"{out_dir} exists and is not a folder; pass another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_report(out_dir):
        raise ChddlError(
            f"{out_dir} holds files that are not a chddl report; a report only replaces an earlier report: pass a "
            "new or empty --out"
        )

    def write(tmp: Path) -> None:
        (tmp / "images").mkdir()
        (tmp / "report.md").write_text(markdown_page(sections, tmp / "images"))
        (tmp / "report.html").write_text(html_page(sections))

    # Written beside its destination and swapped in: a failure leaves the earlier report as it was.
    write_swapped(out_dir, write, "report")
    return out_dir / "report.md", out_dir / "report.html"
