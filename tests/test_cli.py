"""The command line, through Typer's CliRunner."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from chddl_cli.app import app
from tests.conftest import make_npz

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("label", "pretrain-experts", "train-teacher", "condense", "evaluate", "report", "demo"):
        assert re.search(rf"^\s+{command}\s", result.output, re.MULTILINE), command


def test_label_help_documents_the_options() -> None:
    result = invoke("label", "--help")
    assert result.exit_code == 0
    for option in ("--num-domains", "--beta", "--labeler", "--size", "--force", "--config"):
        assert option in result.output


def test_label_prints_agreement_and_then_hits_the_cache(tmp_path) -> None:
    npz = make_npz(tmp_path / "d.npz", n=80)
    first = invoke("--workdir", str(tmp_path / "ws"), "label", str(npz), "--size", "16", "-D", "2")
    assert first.exit_code == 0, first.output
    assert "NMI" in first.output and "computed" in first.output
    second = invoke("--workdir", str(tmp_path / "ws"), "label", str(npz), "--size", "16", "-D", "2")
    assert second.exit_code == 0
    assert "cached - skipping" in second.output


def test_label_with_a_training_subset_says_how_many_images_it_kept(tmp_path) -> None:
    npz = make_npz(tmp_path / "d.npz", n=80)
    result = invoke(
        "--workdir",
        str(tmp_path / "ws"),
        "label",
        str(npz),
        "--size",
        "16",
        "-D",
        "2",
        "--train-per-class",
        "10",
        "--test-per-class",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert "39 (30 train / 9 test" in result.output
    assert "of 64 train / 16 test: at most 10 train / 3 test per class" in result.output


def test_label_without_path_uses_the_workspace_dataset(tmp_path) -> None:
    npz = make_npz(tmp_path / "d.npz", n=80)
    assert invoke("-w", str(tmp_path / "ws"), "label", str(npz), "--size", "16").exit_code == 0
    result = invoke("-w", str(tmp_path / "ws"), "label", "--labeler", "random")
    assert result.exit_code == 0 and "labels-random-D4" in result.output


def test_label_accepts_an_explicit_dataset_artifact(tmp_path) -> None:
    npz = make_npz(tmp_path / "d.npz", n=80)
    invoke("-w", str(tmp_path / "ws"), "label", str(npz), "--size", "16")
    dataset_dir = next((tmp_path / "ws" / "artifacts").glob("dataset-*"))
    result = invoke("-w", str(tmp_path / "ws2"), "label", str(dataset_dir), "--labeler", "oracle")
    assert result.exit_code == 0 and "1.000" in result.output


def test_workdir_comes_from_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHDDL_WORKDIR", str(tmp_path / "envws"))
    npz = make_npz(tmp_path / "d.npz", n=80)
    assert invoke("label", str(npz), "--size", "16").exit_code == 0
    assert (tmp_path / "envws" / "latest.yaml").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["label", "/no/such/path"], "no such file or directory"),
        (["label", "DATA", "--beta", "0"], "--beta must lie in (0, 1]"),
        (["label", "DATA", "--beta", "1.5"], "--beta must lie in (0, 1]"),
        (["label", "DATA", "-D", "1000"], "exceeds the"),
        (["label", "DATA", "--labeler", "nope"], "unknown labeler 'nope'"),
        (["--device", "warp", "label", "DATA"], "unknown device"),
        (["label"], "no dataset artifact in workspace"),
    ],
)
def test_bad_input_gives_one_line_error_and_nonzero_exit(tmp_path, args, message) -> None:
    npz = make_npz(tmp_path / "d.npz", n=40)
    args = [str(npz) if a == "DATA" else a for a in args]
    result = invoke("-w", str(tmp_path / "ws"), *args)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output


def test_bad_input_does_not_damage_existing_artifacts(tmp_path) -> None:
    npz = make_npz(tmp_path / "d.npz", n=80)
    invoke("-w", str(tmp_path / "ws"), "label", str(npz), "--size", "16")
    before = sorted(p.name for p in (tmp_path / "ws" / "artifacts").iterdir())
    assert invoke("-w", str(tmp_path / "ws"), "label", str(npz), "--beta", "7").exit_code == 1
    assert sorted(p.name for p in (tmp_path / "ws" / "artifacts").iterdir()) == before


def test_unwritable_workspace_is_a_clean_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke("-w", str(blocker / "ws"), "label", "builtin:demo")
    assert result.exit_code == 1 and "not writable" in result.output


def test_demo_runs_and_summarises(tmp_path) -> None:
    result = invoke("-w", str(tmp_path / "ws"), "demo")
    assert result.exit_code == 0, result.output
    assert "demo done" in result.output and "NMI" in result.output


def _labelled_workspace(tmp_path) -> str:
    npz = make_npz(tmp_path / "d.npz", n=60)
    ws = str(tmp_path / "ws")
    assert invoke("-w", ws, "label", str(npz), "--size", "16", "-D", "2").exit_code == 0
    return ws


def test_condense_uses_the_workspace_labels_and_reports(tmp_path) -> None:
    ws = _labelled_workspace(tmp_path)
    args = ["-w", ws, "condense", "--ipc", "2", "--iterations", "2", "--batch-real", "8", "--compile", "off"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "DM + CHDDL" in first.output and "2 per class x 3 classes" in first.output
    again = invoke(*args)
    assert "cached - skipping" in again.output


def test_condense_says_how_many_checkpoints_it_wrote(tmp_path) -> None:
    ws = _labelled_workspace(tmp_path)
    args = ["-w", ws, "condense", "--ipc", "1", "--iterations", "3", "--batch-real", "8", "--compile", "off"]
    result = invoke(*args, "--checkpoint-every", "1", "--log-every", "1")
    assert result.exit_code == 0, result.output
    assert re.search(r"2 checkpoints written in [0-9.e-]+ s", result.output)  # after iterations 1 and 2, not 3


def test_no_share_real_reaches_the_artifact_config_and_key(tmp_path) -> None:
    ws = _labelled_workspace(tmp_path)
    args = ["-w", ws, "condense", "--ipc", "1", "--iterations", "1", "--batch-real", "8", "--compile", "off"]
    shared, separate = invoke(*args), invoke(*args, "--no-share-real")
    assert shared.exit_code == 0 and separate.exit_code == 0, separate.output
    configs = {}
    for meta in Path(ws, "artifacts").glob("condensed-*/meta.yaml"):
        cfg = yaml.safe_load(meta.read_text())["config"]
        configs[cfg["share_real"]] = meta.parent.name
    assert set(configs) == {True, False} and configs[True] != configs[False]


def test_condense_without_labels_names_the_command_to_run(tmp_path) -> None:
    result = invoke("-w", str(tmp_path / "ws"), "condense", "--ipc", "1")
    assert result.exit_code == 1 and "chddl label PATH" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["condense", "--ipc", "500"], "exceeds the smallest class"),
        (["condense", "--base", "kip"], "unknown base method 'kip'; valid: datm, dc, dm, mtt, rded, sre2l"),
        (["condense", "--arch", "nope"], "unknown architecture 'nope'; valid: alexnet, convnet"),
        (["condense", "--lam", "nan"], "--lam must be a finite number"),
        (["--device", "cuda", "condense"], "CUDA is not available"),
    ],
)
def test_condense_bad_input_fails_cleanly(tmp_path, args, message) -> None:
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ws = _labelled_workspace(tmp_path)
    result = invoke("-w", ws, *args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not list((tmp_path / "ws" / "artifacts").glob("condensed-*"))


def test_evaluate_prints_mean_and_std_per_domain(tmp_path) -> None:
    ws = _labelled_workspace(tmp_path)
    assert (
        invoke(
            "-w", ws, "condense", "--ipc", "2", "--iterations", "1", "--batch-real", "8", "--compile", "off"
        ).exit_code
        == 0
    )
    result = invoke("-w", ws, "evaluate", "--runs", "2", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "±" in result.output and "d0" in result.output and "d1" in result.output


def test_results_table_keeps_architecture_names_on_a_narrow_console(tmp_path) -> None:
    from rich.console import Console

    from chddl_cli.evaluate import results_table
    from stages.artifacts import Workspace

    ws = _labelled_workspace(tmp_path)
    assert (
        invoke(
            "-w", ws, "condense", "--ipc", "1", "--iterations", "1", "--batch-real", "8", "--compile", "off"
        ).exit_code
        == 0
    )
    assert invoke("-w", ws, "evaluate", "--arch", "convnet,alexnet", "--runs", "1", "--epochs", "1").exit_code == 0
    console = Console(width=40, record=True)
    console.print(results_table(Workspace(ws).latest("evaluation")))
    text = console.export_text()
    assert "convnet" in text and "alexnet" in text and "…" not in text


@pytest.mark.parametrize(
    "args,message",
    [
        (["evaluate", "--runs", "0"], "--runs must be at least 1"),
        (["evaluate", "--arch", "convnet,lenet"], "unknown architecture 'lenet'"),
        (["evaluate", "--target-domain", "mars"], "unknown target domain 'mars'"),
        (["evaluate", "--baseline", "median"], "unknown baseline 'median'"),
    ],
)
def test_evaluate_bad_input_fails_cleanly(tmp_path, args, message) -> None:
    ws = _labelled_workspace(tmp_path)
    invoke("-w", ws, "condense", "--ipc", "1", "--iterations", "1", "--batch-real", "8", "--compile", "off")
    result = invoke("-w", ws, *args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_evaluating_a_non_condensed_artifact_is_refused(tmp_path) -> None:
    ws = _labelled_workspace(tmp_path)
    dataset_dir = next((tmp_path / "ws" / "artifacts").glob("dataset-*"))
    result = invoke("-w", ws, "evaluate", str(dataset_dir))
    assert result.exit_code == 1 and "a 'condensed' artifact is needed" in result.output


@pytest.mark.slow
def test_condense_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from stages.artifacts import read_artifact

    npz = make_npz(tmp_path / "d.npz", n=60)
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "condense:\n  ipc: 2\n  iterations: 40\n  batch_real: 8\n  checkpoint_every: 5\n  log_every: 5\n  compile: "
        "'off'\n"
    )
    results = []
    for name, kill in (("plain", False), ("killed", True)):
        ws = str(tmp_path / name)
        base = [sys.executable, "-m", "chddl_cli", "-q", "-w", ws]
        subprocess.run([*base, "label", str(npz), "--size", "16", "-D", "2"], check=True, capture_output=True)
        cmd = [*base, "condense", "--config", str(preset)]
        if kill:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            partial = tmp_path / name / "partial"
            deadline = time.time() + 120
            while time.time() < deadline and not list(partial.glob("*/checkpoint.yaml")):
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert list(partial.glob("*/checkpoint.yaml")), "no checkpoint was written before the kill"
            assert not list((tmp_path / name / "artifacts").glob("condensed-*"))
        subprocess.run(cmd, check=True, capture_output=True)
        results.append(read_artifact(next((tmp_path / name / "artifacts").glob("condensed-*")), "condensed"))
    assert results[1].metrics["resumed_from"] > 0
    assert torch.equal(results[0].tensor("images"), results[1].tensor("images"))


def test_sigterm_stops_the_cli_like_ctrl_c(monkeypatch) -> None:
    import os
    import signal

    from chddl_cli import app as app_module

    def send_sigterm(**_: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(app_module, "app", send_sigterm)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt):
            app_module.main()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_exits_with_143_after_checkpointing(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    npz = make_npz(tmp_path / "d.npz", n=60)
    base = [sys.executable, "-m", "chddl_cli", "-w", str(tmp_path / "ws")]
    subprocess.run([*base, "-q", "label", str(npz), "--size", "16", "-D", "2"], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*base, "condense", "--ipc", "1", "--iterations", "100000", "--batch-real", "8", "--compile", "off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "ws" / "partial").glob("*")):
        time.sleep(0.2)
    time.sleep(1.0)  # inside the iteration loop
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1].startswith("error: terminated; nothing complete was lost")
    assert list((tmp_path / "ws" / "partial").glob("*/checkpoint.yaml"))


def test_condense_help_lists_algorithm1_and_the_mask_options() -> None:
    result = runner.invoke(app, ["condense", "--help"], catch_exceptions=False, terminal_width=200)
    assert result.exit_code == 0
    for text in ("algorithm1", "--no-domain-lambda", "--mask-resolution", "--mask-channels", "resnet18, resnet18_bn"):
        assert text in result.output


def test_condense_help_lists_each_methods_options_in_its_own_section() -> None:
    from stages.methods import METHODS

    text = runner.invoke(app, ["condense", "--help"], catch_exceptions=False, terminal_width=200).output
    sections = re.split(r"\n(?=\S.*:\n)", text)
    by_title = {part.split(":\n", 1)[0]: part for part in sections}
    for name in METHODS.names():
        spec = METHODS.get(name)
        title = f"{spec.title or name.upper()} options (--base {name})"
        for field in spec.own_options:
            assert f"--{field.replace('_', '-')} " in by_title[title], (name, field)
    assert "--tau " in by_title["CHDDL options (--domain-aware)"]
    assert "--syn-steps" not in by_title["Options"]


def test_a_longer_condense_says_which_set_it_continued(tmp_path) -> None:
    ws = str(tmp_path / "ws")
    npz = make_npz(tmp_path / "d.npz", n=60)
    assert invoke("--workdir", ws, "label", str(npz), "--size", "16", "-D", "2").exit_code == 0
    common = ["--workdir", ws, "condense", "--ipc", "1", "--batch-real", "8", "--compile", "off"]
    assert invoke(*common, "--iterations", "2").exit_code == 0
    (name,) = [p.name for p in (tmp_path / "ws" / "artifacts").glob("condensed-*")]
    second = runner.invoke(app, [*common, "--iterations", "3"], catch_exceptions=False, terminal_width=300)
    assert second.exit_code == 0, second.output
    assert f"continuing {name} from its final iteration 2" in second.output


def test_threads_sets_torchs_cpu_threads(tmp_path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        assert invoke("-w", str(tmp_path / "ws"), "--threads", "1", "report").exit_code == 1  # empty workspace
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    bad = runner.invoke(app, ["--threads", "0", "report"])
    assert bad.exit_code == 2


@pytest.mark.parametrize(
    "args, text",
    [
        (["condense", "--bogus"], "No such option: --bogus"),
        (["condense", "--ipc", "x"], "Invalid value for '--ipc'"),
        (["condense", "--workdir", "ws"], "--workdir is a global option and goes before the subcommand"),
        (["evaluate", "-q"], "-q is a global option and goes before the subcommand: `chddl -q ... evaluate ...`"),
    ],
)
def test_usage_errors_are_one_line_in_chddls_format(args, text) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "chddl_cli", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and text in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr


def test_sre2l_from_the_command_line_trains_a_teacher_condenses_and_scores_with_soft_labels(tmp_path) -> None:
    ws = _labelled_workspace(tmp_path)
    teacher = invoke("-w", ws, "train-teacher", "--epochs", "1", "--batch-size", "16")
    assert teacher.exit_code == 0, teacher.output
    assert "1 epoch, lr" in teacher.output
    path = next(line for line in teacher.output.splitlines() if line.startswith("teacher: ")).split(": ", 1)[1]
    cond = invoke("-w", ws, "condense", "--base", "sre2l", "--ipc", "1", "--iterations", "2", "--teacher", path)
    assert cond.exit_code == 0 and "SRE2L + CHDDL" in cond.output and "teacher teacher-convnet_bn" in cond.output
    ev = invoke("-w", ws, "evaluate", "--runs", "1", "--epochs", "2", "--soft-labels", path)
    assert ev.exit_code == 0 and "soft labels of" in ev.output and "eval-sre2l_chddl-ipc1-convnet-soft-" in ev.output


def test_soft_labels_that_are_not_a_teacher_fail_in_one_line(tmp_path) -> None:
    ws = _labelled_workspace(tmp_path)
    dataset_dir = next((tmp_path / "ws" / "artifacts").glob("dataset-*"))
    result = invoke("-w", ws, "evaluate", "--baseline", "random", "--ipc", "1", "--soft-labels", str(dataset_dir))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "needs a teacher artifact" in errors[0]
    assert "train-teacher" in errors[0]


def test_counts_read_in_the_singular_and_plural() -> None:
    from chddl_cli.common import plural

    assert [plural(1, "epoch"), plural(2, "epoch"), plural(1, "process"), plural(4, "process")] == [
        "1 epoch",
        "2 epochs",
        "1 process",
        "4 processes",
    ]


def test_an_unwritable_demo_report_names_the_workspace_option_not_out(monkeypatch, tmp_path) -> None:
    from chddl_cli import demo
    from stages.errors import ChddlError
    from stages.outputs import NotWritable

    def unwritable(workspace):
        raise NotWritable(tmp_path / "ws" / "report", "Read-only file system")

    monkeypatch.setattr(demo.api, "report", unwritable)
    with pytest.raises(ChddlError) as info:
        demo.write_report(tmp_path / "ws")
    assert "`chddl -w DIR demo`" in str(info.value) and "--out" not in str(info.value)
