"""The report: every artifact kind, an empty workspace, valid self-contained HTML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from stages import report
from stages.condense import CondenseConfig
from stages.condense import run as condense_run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.errors import ChddlError
from stages.evaluate import EvaluateConfig, baseline, from_condensed
from stages.evaluate import run as evaluate_run
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.paper import paper_figure
from stages.report import results
from tests.conftest import make_npz


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.sources: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


@pytest.fixture
def full_workspace(tmp_path, workspace):
    ds = load_dataset(
        ingest(str(make_npz(tmp_path / "pacs_like.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)[
            0
        ]
    )
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), workspace)[0], ds)
    for tau in (0.1, 0.5):
        cond, _ = condense_run(
            ds,
            labels,
            build(CondenseConfig, {"ipc": 1, "iterations": 2, "batch_real": 8, "compile": "off", "tau": tau}),
            workspace,
        )
        evaluate_run(from_condensed(cond, ds), ds, build(EvaluateConfig, {"runs": 2, "epochs": 1}), workspace)
    evaluate_run(baseline(ds, "random", 1, 0), ds, build(EvaluateConfig, {"runs": 2, "epochs": 1}), workspace)
    return workspace


def test_report_covers_every_artifact_kind(full_workspace) -> None:
    md, page = report.run(full_workspace)
    text = md.read_text()
    for heading in (
        "## Datasets",
        "## Pseudo-domain labels",
        "## Condensed sets",
        "## Evaluation",
        "## Cost of each stage",
    ):
        assert heading in text
    assert "DM+CHDDL" in text and "RANDOM" in text
    assert "tau" in text and "0.1:" in text and "0.5:" in text  # the tau sweep is tabulated
    figures = sorted((md.parent / "images").iterdir())
    assert figures and all(p.suffix == ".svg" and ET.parse(p).getroot().tag.endswith("svg") for p in figures)
    assert all(f"images/{p.name}" in text for p in figures)


def test_html_is_well_formed_and_self_contained(full_workspace) -> None:
    _, page = report.run(full_workspace)
    checker = _Checker()
    checker.feed(page.read_text())
    assert checker.errors == [] and checker.stack == []
    assert all(src.startswith("data:image/png;base64,") for src in checker.sources)
    assert page.read_text().count("<svg") >= 5
    assert "http://" not in page.read_text() and "https://" not in page.read_text()


def test_a_set_with_corrupt_tensors_is_listed_as_skipped_and_the_report_still_written(full_workspace) -> None:
    (condensed,) = [a for a in full_workspace.all() if a.stage == "condensed"][:1]
    tensors = condensed.path / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-64] + bytes(64))
    md, page = report.run(full_workspace)
    text = md.read_text()
    skipped = text[text.index("## Skipped artifacts") :]
    assert condensed.name in skipped and "checksum" in skipped and "`chddl condense ... --force`" in skipped
    assert page.is_file() and "--force to re-run" not in text


def test_a_set_without_its_grid_preview_is_drawn_from_its_tensors(full_workspace) -> None:
    condensed = sorted((full_workspace.root / "artifacts").glob("condensed-*"))
    with_grid = report.run(full_workspace)[0].read_text()
    for c in condensed:
        (c / "grid.png").unlink()  # results committed without their previews
    text = report.run(full_workspace)[0].read_text()
    caption = "synthetic images, one row per class"
    assert text.count(caption) == with_grid.count(caption) == 2 * len(condensed)  # alt text and caption
    assert "Skipped artifacts" not in text


def test_the_paper_column_is_filled_when_only_the_results_were_copied(full_workspace) -> None:
    import shutil

    for folder in (full_workspace.root / "artifacts").glob("dataset-*"):
        shutil.rmtree(folder)  # evaluations and sets copied without the dataset they came from
    text = report.run(full_workspace)[0].read_text()
    rows = [line for line in text.splitlines() if "| DM+CHDDL | 1 | convnet |" in line and "| 2 x 1 |" in line]
    assert rows and all("| 34.7 ± 1.1 |" in row for row in rows)  # Table 2, PACS DM + CHDDL IPC 1


def test_empty_workspace_gives_a_clear_message(workspace) -> None:
    with pytest.raises(ChddlError, match="holds no artifacts yet; run `chddl demo`"):
        report.run(workspace)


def test_paper_figures_match_by_dataset_method_ipc_and_arch() -> None:
    assert paper_figure("/data/pacs_32.npz", "dm+chddl", 10, "convnet") == (50.9, 0.4)
    assert paper_figure("cifar10_jpeg/train", "mtt", 10, "resnet18") == (38.9, 0.8)
    assert paper_figure("cifar100", "dm", 10, "convnet") is None
    assert paper_figure("builtin:demo", "dm", 1, "convnet") is None


def test_unwritable_or_foreign_output_folder_is_refused(full_workspace, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ChddlError, match="cannot write .*out .*; pass a writable --out"):
        report.run(full_workspace, blocker / "out")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ChddlError, match="holds files that are not a chddl report"):
        report.run(full_workspace, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_report_folder_holding_the_users_files_too_is_not_replaced(full_workspace, tmp_path) -> None:
    out = tmp_path / "docs"
    report.run(full_workspace, out)
    (out / "thesis.tex").write_text("keep me")
    (out / "images" / "photo.jpg").write_text("mine")
    with pytest.raises(ChddlError, match="holds files that are not a chddl report"):
        report.run(full_workspace, out)
    assert (out / "thesis.tex").read_text() == "keep me" and (out / "images" / "photo.jpg").read_text() == "mine"


def test_an_earlier_report_is_replaced_whole(full_workspace, tmp_path) -> None:
    out = tmp_path / "r"
    report.run(full_workspace, out)
    (out / "images" / "figure_999.svg").write_text("<svg/>")  # a figure of an earlier, longer report
    _, page = report.run(full_workspace, out)
    assert page.is_file() and not (out / "images" / "figure_999.svg").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.")]


def test_report_refuses_the_current_folder(full_workspace, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.html").write_text("")
    with pytest.raises(ChddlError, match="is the current folder or one above it"):
        report.run(full_workspace, tmp_path)
    assert (tmp_path / "report.html").exists()


def test_chddl_delta_is_the_difference_of_means_with_welch_standard_error() -> None:
    delta, se = results.chddl_delta([30.0, 32.0, 34.0], [35.0, 36.0])
    assert delta == pytest.approx(35.5 - 32.0)
    assert se == pytest.approx((0.5 / 2 + 4.0 / 3) ** 0.5)


def test_base_and_chddl_sets_are_paired_and_pooled_over_seeds(tmp_path, workspace) -> None:
    ds = load_dataset(
        ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)[0]
    )
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), workspace)[0], ds)
    runs = {False: [], True: []}
    for aware, seed in ((False, 0), (False, 1), (True, 0)):
        cfg = build(
            CondenseConfig,
            {"ipc": 1, "iterations": 2, "batch_real": 8, "compile": "off", "domain_aware": aware, "seed": seed},
        )
        cond, _ = condense_run(ds, labels, cfg, workspace)
        ev, _ = evaluate_run(from_condensed(cond, ds), ds, build(EvaluateConfig, {"runs": 2, "epochs": 1}), workspace)
        runs[aware] += ev.metrics["convnet"]["runs"]
    text = report.run(workspace)[0].read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {ds.artifact.name} | DM | 1 |"))
    delta, se = results.chddl_delta(runs[False], runs[True])
    assert "(2 x 2)" in row and "(1 x 2)" in row and f"{delta:+.2f} ± {se:.2f}" in row


def test_each_chddl_variant_gets_its_own_row_against_the_base(tmp_path, workspace) -> None:
    ds = load_dataset(
        ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)[0]
    )
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), workspace)[0], ds)
    runs = {}
    for aware, lam in ((False, 0.1), (True, 0.1), (True, 1.0)):
        cfg = build(
            CondenseConfig,
            {"ipc": 1, "iterations": 2, "batch_real": 8, "compile": "off", "domain_aware": aware, "lam": lam},
        )
        cond, _ = condense_run(ds, labels, cfg, workspace)
        ev, _ = evaluate_run(from_condensed(cond, ds), ds, build(EvaluateConfig, {"runs": 2, "epochs": 1}), workspace)
        runs[(aware, lam)] = ev.metrics["convnet"]["runs"]
    text = report.run(workspace)[0].read_text()
    rows = [line for line in text.splitlines() if line.startswith(f"| {ds.artifact.name} | DM | 1 |")]
    assert len(rows) == 2
    for lam in (0.1, 1.0):
        row = next(r for r in rows if f"lambda {lam}," in r)
        delta, se = results.chddl_delta(runs[(False, 0.1)], runs[(True, lam)])
        assert "fft D 2 beta 0.1" in row and "(1 x 2)" in row and f"{delta:+.2f} ± {se:.2f}" in row


def test_a_sweep_row_varies_one_setting_with_every_other_setting_equal(tmp_path, workspace) -> None:
    ds = load_dataset(
        ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)[0]
    )
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), workspace)[0], ds)
    short = {"runs": 2, "epochs": 1}
    for tau, lam, epochs in ((0.1, 0.1, 1), (0.5, 0.1, 1), (0.5, 1.0, 1), (0.1, 0.1, 2)):
        cond, _ = condense_run(
            ds,
            labels,
            build(
                CondenseConfig, {"ipc": 1, "iterations": 2, "batch_real": 8, "compile": "off", "tau": tau, "lam": lam}
            ),
            workspace,
        )
        evaluate_run(from_condensed(cond, ds), ds, build(EvaluateConfig, short | {"epochs": epochs}), workspace)
    evals = [a for a in workspace.all() if a.stage == "evaluation"]
    rows = results.sweep_section(evals, workspace).rows
    # tau at lambda 0.1 / 1 epoch, lambda at tau 0.5: the lambda 1.0 set and the 2-epoch evaluation join no tau row
    assert [(r[0], r[4], r[5].count(":")) for r in rows] == [("lam", "2 x 1", 2), ("tau", "2 x 1", 2)]
    assert rows[1][5].startswith("0.1: ") and ", 0.5: " in rows[1][5] and "(1 x 2)" in rows[1][5]


def test_evaluations_at_another_learning_rate_are_compared_only_with_each_other(tmp_path, workspace) -> None:
    ds = load_dataset(
        ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)[0]
    )
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), workspace)[0], ds)
    runs = {}
    for aware in (False, True):
        cfg = build(
            CondenseConfig, {"ipc": 1, "iterations": 2, "batch_real": 8, "compile": "off", "domain_aware": aware}
        )
        cond, _ = condense_run(ds, labels, cfg, workspace)
        for lr, n in ((None, 2), (0.05, 3)):
            ev, _ = evaluate_run(
                from_condensed(cond, ds), ds, build(EvaluateConfig, {"runs": n, "epochs": 1, "lr": lr}), workspace
            )
            runs[(aware, lr)] = ev.metrics["convnet"]["runs"]
    text = report.run(workspace)[0].read_text()
    rows = [line for line in text.splitlines() if line.startswith(f"| {ds.artifact.name} | DM | 1 |")]
    assert len(rows) == 2
    own = next(r for r in rows if "| 1 epoch |" in r)
    other = next(r for r in rows if "| 1 epoch, lr 0.05 |" in r)
    for row, lr in ((own, None), (other, 0.05)):
        delta, se = results.chddl_delta(runs[(False, lr)], runs[(True, lr)])
        assert f"{delta:+.2f} ± {se:.2f}" in row


def test_a_set_made_before_a_setting_existed_sweeps_as_if_it_had_the_default(full_workspace) -> None:
    import yaml

    old = next(a for a in full_workspace.all() if a.stage == "condensed" and a.config["tau"] == 0.1)
    meta = yaml.safe_load((old.path / "meta.yaml").read_text())
    del meta["config"]["mask_optimizer"]  # as written before --mask-optimizer existed
    (old.path / "meta.yaml").write_text(yaml.safe_dump(meta))
    evals = [a for a in full_workspace.all() if a.stage == "evaluation" and a.info.get("train_kind") != "random"]
    rows = results.sweep_section(evals, full_workspace).rows
    assert [r[0] for r in rows] == ["tau"] and rows[0][5].count(":") == 2


@pytest.fixture
def compared_workspace(tmp_path, workspace):
    """DM, DM+CHDDL at two tau and random real images, each evaluated."""
    ds = load_dataset(
        ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)[0]
    )
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), workspace)[0], ds)
    tiny = {"ipc": 1, "iterations": 2, "batch_real": 8, "compile": "off"}
    for extra in ({"domain_aware": False}, {"tau": 0.1}, {"tau": 0.5}):
        cond, _ = condense_run(ds, labels, build(CondenseConfig, tiny, extra), workspace)
        evaluate_run(from_condensed(cond, ds), ds, build(EvaluateConfig, {"runs": 2, "epochs": 1}), workspace)
    evaluate_run(baseline(ds, "random", 1, 0), ds, build(EvaluateConfig, {"runs": 2, "epochs": 1}), workspace)
    return workspace


def _figures(md) -> dict[str, int]:
    """caption -> number of data series of each SVG figure of a Markdown report."""
    out = {}
    text = md.read_text()
    for path, caption in re.findall(r"!\[[^\]]*\]\((images/figure_\d+\.svg)\)\n\*([^*]+)\*", text):
        root = ET.parse(md.parent / path).getroot()
        ids = {el.get("id") for el in root.iter() if (el.get("id") or "").startswith("series-")}
        out.setdefault(caption, len(ids))
    return out


def test_every_figure_is_svg_with_the_expected_series(compared_workspace) -> None:
    md, _ = report.run(compared_workspace)
    figures = _figures(md)
    loss = {c: n for c, n in figures.items() if c.endswith("loss curves")}
    assert sorted(loss.values()) == [1, 2, 2]  # DM: L_cls; DM+CHDDL: L_cls and L_dom
    grids = [c for c in figures if "synthetic images, one row per class" in c]
    views = [c for c in figures if "domain views and masks" in c]
    assert len(grids) == 3 and len(views) == 2
    assert figures[next(c for c in figures if "top-1 % of every set and baseline" in c)] == 1
    assert figures[next(c for c in figures if "per true domain" in c)] == 4  # one series per set
    assert figures[next(c for c in figures if c.startswith("CHDDL minus base"))] == 1
    assert figures[next(c for c in figures if "against tau" in c)] == 1


def test_the_forest_plot_has_a_row_per_comparison_and_a_zero_line(compared_workspace) -> None:
    md, _ = report.run(compared_workspace)
    caption = next(c for c in _figures(md) if c.startswith("CHDDL minus base"))
    path = re.search(rf"!\[{re.escape(caption)}\]\((images/figure_\d+\.svg)\)", md.read_text()).group(1)
    svg = (md.parent / path).read_text()
    assert (
        svg.count("| tau 0.5 (1+1 seeds)") == 1 and svg.count("| tau 0.1 (1+1 seeds)") == 1
    )  # labels name what differs
    assert "## Summary" in md.read_text().split("## Datasets")[0]  # the summary opens the page


def test_the_forest_plot_is_drawn_once_and_promises_no_paper_figure_it_lacks(compared_workspace) -> None:
    text = report.run(compared_workspace)[0].read_text()
    forests = re.findall(r"!\[(CHDDL minus base[^\]]*)\]", text)
    assert len(forests) == 1
    assert forests[0].endswith("the paper publishes no figure for these datasets and settings")
    assert text.index(forests[0]) < text.index("## Datasets")  # in the summary


def test_plots_name_sets_by_the_settings_that_differ_not_by_hash(compared_workspace) -> None:
    from stages import figures

    md, _ = report.run(compared_workspace)
    text = md.read_text()
    path = re.search(r"!\[[^\]]*top-1 % of every set and baseline[^\]]*\]\((images/figure_\d+\.svg)\)", text).group(1)
    labels = figures.tick_labels((md.parent / path).read_text())
    assert {"DM IPC 1", "DM+CHDDL IPC 1, tau 0.1", "DM+CHDDL IPC 1, tau 0.5"} <= set(labels)


def test_grids_are_labelled_with_class_names_and_view_headings(compared_workspace) -> None:
    md, _ = report.run(compared_workspace)
    text = md.read_text()
    grid = re.search(r"!\[[^\]]*synthetic images, one row per class\]\((images/figure_\d+\.svg)\)", text).group(1)
    assert all(f">{name}<" in (md.parent / grid).read_text() for name in ("c0", "c1", "c2"))
    views = re.search(r"!\[[^\]]*domain views and masks[^\]]*\]\((images/figure_\d+\.svg)\)", text).group(1)
    svg = (md.parent / views).read_text()
    assert all(f">{h}<" in svg for h in ("image", "view 0", "view 1", "mask 0", "mask 1", "winner"))
    assert all(f">{h}<" in svg for h in ("winner colours", "pseudo-domain 0", "pseudo-domain 1"))


def test_tables_align_text_left_and_numbers_right(compared_workspace) -> None:
    _, page = report.run(compared_workspace)
    head = re.search(r"<h2>Cost of each stage</h2>.*?<thead><tr>(.*?)</tr>", page.read_text(), re.S).group(1)
    assert head.startswith("<th>artifact</th><th>stage</th>") and '<th class="num">wall s</th>' in head


def test_log_axes_read_as_plain_numbers() -> None:
    import numpy as np

    from stages import figures

    history = np.stack([np.geomspace(553, 98, 200), np.geomspace(60, 19, 200)], 1)
    labels = figures.tick_labels(figures.loss_curves(history, True, "t"))
    assert {"20", "100", "200"} <= set(labels)
    assert not any("×" in label or "10^" in label or "mathdefault" in label for label in labels)
