"""The compiled student step: the gradients of an unrolled student, as the eager step gives them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from stages.methods import student
from stages.methods.student import CompiledStudentStep, flattened
from stages.models import per_sample
from stages.models.convnet import ConvNet

STEPS = 3
# The step's own logic (its autograd function, its graphs, one-hot classes) traced and run without code
# generation: inductor's compile time (~40 s for these graphs on 2 cores) is kept out of the suite; its
# numbers on the real student are measured in bench/mtt_speed.py (BENCHMARKS.md).
BACKEND = "aot_eager"


def _student():
    torch.manual_seed(0)
    net = ConvNet(3, 8, width=8, depth=2)
    theta0, unflatten = flattened(net)
    target = theta0 + 0.05 * torch.randn(theta0.shape)
    return net, unflatten, theta0, target


def test_flattened_parameters_map_back_to_the_network():
    net = ConvNet(3, 8, width=8, depth=2)
    theta, unflatten = flattened(net)
    assert theta.numel() == sum(p.numel() for p in net.parameters())
    for (name, p), (name_back, q) in zip(net.named_parameters(), unflatten(theta).items()):
        assert name == name_back and torch.equal(p, q)


def _eager_step(net, unflatten):
    def step(theta, x, y, lr):
        loss = F.cross_entropy(functional_call(net, unflatten(theta), (x,)), y)
        return theta - lr * torch.autograd.grad(loss, theta, create_graph=True)[0]

    return step


def _unrolled(step, theta0, target, x, y, lr):
    theta = theta0.clone().requires_grad_(True)
    for i in range(STEPS):
        theta = step(theta, x * (1.0 + 0.1 * i), y, lr)  # a different input at each step, as augmentation gives
    return ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum()


def _gradients(step, theta0, target, y_of):
    torch.manual_seed(1)
    x = torch.randn(6, 3, 8, 8, requires_grad=True)
    logits = torch.randn(6, 3, requires_grad=True)
    lr = torch.tensor(0.05, requires_grad=True)
    loss = _unrolled(step, theta0, target, x, y_of(logits), lr)
    wanted = [x, lr] + ([logits] if y_of(logits).requires_grad else [])
    return loss.detach(), torch.autograd.grad(loss, wanted)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return bool((a - b).abs().max() <= rtol * b.abs().max())


def test_compiled_step_gives_the_eager_gradients_for_class_labels():
    net, unflatten, theta0, target = _student()
    hard = lambda logits: torch.tensor([0, 1, 2, 0, 1, 2])  # noqa: E731
    loss_e, (gx_e, glr_e) = _gradients(_eager_step(net, unflatten), theta0, target, hard)
    loss_c, (gx_c, glr_c) = _gradients(CompiledStudentStep(net, unflatten, backend=BACKEND), theta0, target, hard)
    assert torch.allclose(loss_c, loss_e, rtol=1e-5)
    assert _close(gx_c, gx_e, 1e-3) and gx_e.abs().max() > 0
    assert torch.allclose(glr_c, glr_e, rtol=1e-3)


def test_compiled_step_differentiates_learned_soft_labels():
    net, unflatten, theta0, target = _student()
    soft = lambda logits: logits.softmax(1)  # noqa: E731  (DATM's learned labels)
    _, (gx_e, glr_e, gy_e) = _gradients(_eager_step(net, unflatten), theta0, target, soft)
    _, (gx_c, glr_c, gy_c) = _gradients(CompiledStudentStep(net, unflatten, backend=BACKEND), theta0, target, soft)
    assert _close(gy_c, gy_e, 1e-3) and gy_e.abs().max() > 0
    assert _close(gx_c, gx_e, 1e-3)
    assert torch.allclose(glr_c, glr_e, rtol=1e-3)


@pytest.mark.parametrize("labels", ["classes", "probabilities"])
def test_a_step_keeping_its_residuals_gives_the_eager_gradients(labels: str) -> None:
    net, unflatten, theta0, target = _student()
    y_of = {"classes": lambda _: torch.tensor([0, 1, 2, 0, 1, 2]), "probabilities": lambda z: z.softmax(1)}[labels]
    loss_e, grads_e = _gradients(_eager_step(net, unflatten), theta0, target, y_of)
    kept = CompiledStudentStep(net, unflatten, backend=BACKEND, keep=True)
    loss_k, grads_k = _gradients(kept, theta0, target, y_of)
    assert torch.allclose(loss_k, loss_e, rtol=1e-5)
    assert len(grads_k) == {"classes": 2, "probabilities": 3}[labels]
    for g_k, g_e in zip(grads_k, grads_e):
        assert _close(g_k, g_e, 1e-3) and g_e.abs().max() > 0


def test_a_kept_step_holds_its_graph_until_its_backward_pass_and_not_after() -> None:
    net, unflatten, theta0, _ = _student()
    kept = CompiledStudentStep(net, unflatten, backend=BACKEND, keep=True)
    x = torch.randn(6, 3, 8, 8, requires_grad=True)
    theta = kept(theta0.clone().requires_grad_(True), x, torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor(0.05))
    node = theta.grad_fn
    assert node.name() == "_KeptStepBackward" and hasattr(node, "kept")
    theta.sum().backward()
    assert not hasattr(node, "kept") and x.grad.abs().max() > 0
    with torch.no_grad():  # nothing to differentiate: the step keeps nothing
        assert kept(theta0, x, torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor(0.05)).grad_fn is None


@pytest.mark.parametrize("images_per_chunk", [1, 3])  # 7 chunks of one image; chunks of 3, 2 and 2 images
def test_a_cpu_step_in_chunks_gives_the_whole_batch_gradients(images_per_chunk: int, monkeypatch) -> None:
    net, unflatten, theta0, target = _student()
    monkeypatch.setattr(student, "CHUNK_PIXELS", images_per_chunk * 8 * 8)
    torch.manual_seed(1)
    x, logits = torch.randn(7, 3, 8, 8, requires_grad=True), torch.randn(7, 3, requires_grad=True)
    lr = torch.tensor(0.05, requires_grad=True)
    assert student.chunks(x) == {1: 7, 3: 3}[images_per_chunk]  # 7 images: no equal split in 3 to 6 chunks
    grads = {}
    for name, step in [
        ("eager", _eager_step(net, unflatten)),
        ("chunked", CompiledStudentStep(net, unflatten, BACKEND)),
        ("chunked, residuals kept", CompiledStudentStep(net, unflatten, BACKEND, keep=True)),
    ]:
        loss = _unrolled(step, theta0, target, x, logits.softmax(1), lr)
        grads[name] = (loss.detach(), *torch.autograd.grad(loss, [x, lr, logits]))
    loss_e, gx_e, glr_e, gy_e = grads.pop("eager")
    assert gx_e.abs().max() > 0
    for loss_c, gx_c, glr_c, gy_c in grads.values():
        assert torch.allclose(loss_c, loss_e, rtol=1e-5)
        assert _close(gx_c, gx_e, 1e-3) and _close(gy_c, gy_e, 1e-3)
        assert torch.allclose(glr_c, glr_e, rtol=1e-3)


@pytest.mark.parametrize(("images", "size", "expected"), [(100, 32, 4), (70, 64, 14), (70, 32, 5), (10, 32, 1)])
def test_a_cpu_batch_is_split_into_equal_chunks_where_it_can_be(images: int, size: int, expected: int) -> None:
    x = torch.empty(images, 3, size, size)
    assert student.chunks(x) == expected  # 25 images of 32 px, 6 of 64 px at most: 4 x 25, 14 x 5, 5 x 14
    assert student.chunks(torch.empty(images, 3, size, size, device="meta")) == 1  # not a CPU batch


def test_a_batch_norm_student_is_never_chunked() -> None:
    assert per_sample(ConvNet(3, 8, width=8, depth=2))
    bn = ConvNet(3, 8, width=8, depth=2, norm="batchnorm")
    assert not per_sample(bn) and not CompiledStudentStep(bn, flattened(bn)[1], BACKEND).chunked


def _bench_tape_step():
    # bench/student_residuals.py's residual-keeping step (a benchmark variant, BENCHMARKS.md issue 32)
    bench = Path(__file__).parents[1] / "bench"
    spec = importlib.util.spec_from_file_location("student_residuals", bench / "student_residuals.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(bench))  # for its `import _tree`, as when it runs as a script
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module.TapeStep


def test_the_benchmarked_residual_keeping_step_gives_the_eager_gradients():
    net, unflatten, theta0, target = _student()
    tape = _bench_tape_step()(net, unflatten, backend=BACKEND)
    soft = lambda logits: logits.softmax(1)  # noqa: E731
    loss_e, (gx_e, glr_e, gy_e) = _gradients(_eager_step(net, unflatten), theta0, target, soft)
    loss_t, (gx_t, glr_t, gy_t) = _gradients(tape, theta0, target, soft)
    assert torch.allclose(loss_t, loss_e, rtol=1e-5)
    assert _close(gx_t, gx_e, 1e-3) and gx_e.abs().max() > 0
    assert _close(gy_t, gy_e, 1e-3) and gy_e.abs().max() > 0
    assert torch.allclose(glr_t, glr_e, rtol=1e-3)
