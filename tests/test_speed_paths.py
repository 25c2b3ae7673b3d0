"""The memory- and time-saving paths give the values of the plain ones, and the reference harness loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stages.domain.aware import DomainMasks
from stages.methods import dc
from stages.methods.common import (
    REAL_CHUNK,
    Embedding,
    embed_in_chunks,
    embed_views_with_recompute,
    embed_with_recompute,
    recompute_chunk,
)
from stages.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def _net_and_images(n: int = 40):
    net = create_model("convnet", 4, 16, seed=0)
    return net, torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_a_chunked_real_embedding_equals_the_whole_batch_one() -> None:
    net, x = _net_and_images()
    whole = net.embed(x).detach()
    chunked = embed_in_chunks(lambda n, v: n.embed(v), net, x, chunk=16)
    assert chunked.shape == whole.shape and not chunked.requires_grad
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_recomputed_synthetic_embeddings_give_the_plain_gradient() -> None:
    net, x = _net_and_images()
    target = torch.randn(40, net.embed_dim, generator=torch.Generator().manual_seed(2))
    plain_x, chunked_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ((net.embed(plain_x) - target) ** 2).sum().backward()
    ((embed_with_recompute(net, chunked_x, chunk=16) - target) ** 2).sum().backward()
    assert torch.allclose(plain_x.grad, chunked_x.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("size", "images"), [(16, 128), (32, 128), (64, 32), (128, 8)])
def test_a_recomputed_chunk_holds_the_pixels_of_128_images_of_32_px_at_most(size: int, images: int) -> None:
    net = create_model("convnet", 4, size)
    assert recompute_chunk(net, torch.zeros(1, 3, size, size)) == images


def test_a_network_with_batch_norm_keeps_chunks_of_128_images_whatever_their_size() -> None:
    net = create_model("convnet_bn", 4, 64)
    assert recompute_chunk(net, torch.zeros(1, 3, 64, 64)) == REAL_CHUNK


def test_views_recomputed_in_pixel_sized_chunks_give_the_values_of_128_view_chunks() -> None:
    net = create_model("convnet", 4, 64, seed=0)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(40, 3, 64, 64, generator=g)
    target = torch.randn(160, net.embed_dim, generator=g)
    out = {}
    for chunk in (None, 128):  # 8 images (32 views) per chunk at 64 px, against 32 images (128 views)
        x = images.clone().requires_grad_(True)
        masks = DomainMasks(40, 4, (3, 64, 64), 0.5, "normal", 1.0, torch.Generator().manual_seed(2))
        emb = embed_views_with_recompute(net, x, masks, chunk=chunk)
        ((emb - target) ** 2).sum().backward()
        out[chunk] = (emb.detach(), x.grad, masks.z.grad)
    for new, old in zip(out[None], out[128]):
        assert torch.allclose(new, old, atol=1e-5, rtol=1e-4) and old.abs().sum() > 0


@pytest.mark.parametrize("chunk", [16, 128])  # recomputed chunk by chunk, and one chunk kept
def test_compiled_synthetic_embeddings_give_the_plain_values_and_gradient(chunk: int) -> None:
    net, x = _net_and_images()
    target = torch.randn(40, net.embed_dim, generator=torch.Generator().manual_seed(2))
    eager_x, compiled_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    compiled = Embedding(compiled=True, backend="aot_eager")
    eager_emb = net.embed(eager_x)
    compiled_emb = embed_with_recompute(net, compiled_x, chunk=chunk, embedding=compiled)
    ((eager_emb - target) ** 2).sum().backward()
    ((compiled_emb - target) ** 2).sum().backward()
    assert torch.allclose(eager_emb, compiled_emb, atol=1e-5)
    assert torch.allclose(eager_x.grad, compiled_x.grad, atol=1e-4, rtol=1e-4) and eager_x.grad.abs().sum() > 0


@pytest.mark.parametrize("compiled", [False, True])
def test_dc_takes_the_real_gradient_in_chunks_with_the_whole_batch_values(compiled: bool, monkeypatch) -> None:
    x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x, y = x.contiguous(memory_format=torch.channels_last), torch.arange(40) % 4  # as DC.loss passes them
    net = lambda: create_model("convnet", 4, 16)  # noqa: E731
    method = dc.DC(net, torch.device("cpu"), None, 0.01, 1, 1, 8, compiled, backend="eager")
    method.new_round(0, ("class",), torch.Generator().manual_seed(0))
    whole = method._real_gradients("class", x, y)
    monkeypatch.setattr(dc, "REAL_GRAD_CHUNK", 16)  # chunks of 16, 16 and 8 images
    chunked = method._real_gradients("class", x, y)
    plain = torch.autograd.grad(
        torch.nn.functional.cross_entropy(method.nets["class"](x), y),
        [p for p in method.nets["class"].parameters() if p.ndim > 1],
    )
    assert len(whole) == len(chunked) == len(plain) == 4  # three convolutions and the classifier
    for w, c, p in zip(whole, chunked, plain):
        assert torch.allclose(c, p, rtol=1e-4, atol=1e-6) and torch.allclose(w, p, rtol=1e-4, atol=1e-6)
        assert p.abs().sum() > 0


def test_dc_takes_a_batch_norm_networks_real_gradient_whole(monkeypatch) -> None:
    x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x, y = x.contiguous(memory_format=torch.channels_last), torch.arange(40) % 4
    method = dc.DC(lambda: create_model("convnet_bn", 4, 16), torch.device("cpu"), None, 0.01, 1, 1, 8)
    method.new_round(0, ("class",), torch.Generator().manual_seed(0))
    monkeypatch.setattr(dc, "REAL_GRAD_CHUNK", 16)  # ignored: chunks would have their own batch statistics
    params = [p for p in method.nets["class"].parameters() if p.ndim > 1]
    plain = torch.autograd.grad(torch.nn.functional.cross_entropy(method.nets["class"](x), y), params)
    for got, want in zip(method._real_gradients("class", x, y), plain):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize(("env", "applied"), [({}, "True"), ({"CHDDL_KEEP_MEMORY": "0"}, "False")])
def test_the_allocator_keeps_freed_memory_unless_told_not_to(env: dict, applied: str, monkeypatch) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = "from stages.allocator import keep_freed_memory as k; print(k(), k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [applied, applied]


def test_the_reference_harness_loads_utils_with_the_in_place_copy_made_safe(tmp_path: Path) -> None:
    repo = tmp_path / "DatasetCondensation"
    repo.mkdir()
    (repo / "utils.py").write_text(
        "import torch\n\ndef siamese(n):\n    t = torch.arange(n)\n    t[:] = t[0]\n    return t\n"
    )
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import reference

        assert reference.repo_dir(tmp_path, "dm") == repo and reference.repo_dir(tmp_path, "mtt") is None
        reference._load_utils(repo)
        assert sys.modules["utils"].siamese(4).tolist() == [0, 0, 0, 0]
    finally:
        sys.path.remove(str(ROOT / "bench"))
        sys.modules.pop("utils", None)
        sys.modules.pop("reference", None)


@pytest.mark.slow
def test_the_tiny_imagenet_memory_bench_reports_each_run_against_dm() -> None:
    import json

    cmd = [sys.executable, "bench/tiny_memory.py", "--classes", "3", "--per-class", "12", "--size", "16", "--json"]
    result = json.loads(subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout)
    runs = result["runs"]
    assert set(runs) == {"dm", "chddl", "shared"} and runs["dm"]["peak_vs_dm"] == 1.0
    assert all(r["peak_rss_gib"] > 0.1 and r["wall_s"] > 0 for r in runs.values())
    assert result["input"].startswith("3 classes x 12 random 16 px")


def test_the_tiny_imagenet_memory_bench_refuses_too_few_images_per_class_in_one_line() -> None:
    cmd = [sys.executable, "bench/tiny_memory.py", "--per-class", "8"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "use 12 or more" in out.stderr and "Traceback" not in out.stderr
