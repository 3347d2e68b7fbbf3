"""modulm.functional.linear: x @ weight.T through oneDNN on a CPU equals the float32 product (value
and gradients, any shape and layout) and is taken only where it applies. (Which library a process
uses: tests/test_cpu_matmul.py.)"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import modulm.functional.cpu_matmul as choice
import modulm.functional.linear as lin

needs_onednn = pytest.mark.skipif(not choice.onednn_available(), reason="this torch build has no oneDNN linear kernel")


@pytest.fixture
def backend(monkeypatch):
    """``backend(name, min_macs=0)``: this test's CPU matmul library (restored afterwards)."""
    def use(name: str, min_macs: int = 0) -> None:
        monkeypatch.setattr(choice, "_backend", name)
        monkeypatch.setattr(lin, "ONEDNN_MIN_MACS", min_macs)
    return use


class Ops(TorchDispatchMode):
    """Records the names of the ATen / oneDNN ops that run."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def reference(x, weight, grad):
    """Output and gradients in float64 by plain autograd."""
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    out = x64 @ w64.t()
    out.backward(grad.double())
    return out, x64.grad, w64.grad


def close(got, want, scale):
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6 * scale)


@needs_onednn
@given(st.integers(0, 2**31 - 1), st.lists(st.integers(1, 6), min_size=0, max_size=2), st.integers(1, 40),
       st.integers(1, 40), st.booleans())
def test_onednn_output_and_gradients_equal_the_product(seed, lead, k, n, strided):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(choice, "_backend", "onednn")
        patch.setattr(lin, "ONEDNN_MIN_MACS", 0)
        check_against_float64(seed, lead, k, n, strided)


def check_against_float64(seed, lead, k, n, strided):
    g = torch.Generator().manual_seed(seed)
    rows = [*lead, 3]
    x = torch.randn(*rows, 2 * k, generator=g)[..., ::2] if strided else torch.randn(*rows, k, generator=g)
    weight = torch.randn(k, n, generator=g).t() if strided else torch.randn(n, k, generator=g)  # transposed storage
    grad = torch.randn(*rows, n, generator=g)
    want_out, want_x, want_w = reference(x, weight, grad)
    x, weight = x.requires_grad_(), weight.detach().requires_grad_()
    out = lin.linear(x, weight)
    out.backward(grad)
    assert out.dtype == x.grad.dtype == weight.grad.dtype == torch.float32
    assert weight.grad.is_contiguous() or weight.grad.t().is_contiguous()
    scale = float(k) ** 0.5 * 4
    close(out, want_out, scale)
    close(x.grad, want_x, float(n) ** 0.5 * 4)
    close(weight.grad, want_w, float(torch.tensor(rows).prod()) ** 0.5 * 4)


@needs_onednn
@pytest.mark.parametrize("n, k", [(2048, 128), (128, 344), (64, 64)])  # both orientations of weight_grad
def test_weight_grad_is_the_contiguous_transposed_product(backend, n, k):
    backend("onednn")
    g = torch.Generator().manual_seed(n + k)
    grad, x = torch.randn(300, n, generator=g), torch.randn(300, k, generator=g)
    got = lin.weight_grad(grad, x)
    assert got.shape == (n, k) and got.is_contiguous()
    torch.testing.assert_close(got.double(), grad.double().t() @ x.double(), rtol=0, atol=1e-4)


@needs_onednn
def test_onednn_runs_for_float32_on_the_cpu_and_blas_elsewhere(backend, monkeypatch):
    backend("onednn")
    x, w = torch.randn(8, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)

    def ops_of(fn):
        with Ops() as ops:
            fn().sum().backward()
        return ops.names

    assert ops_of(lambda: lin.linear(x, w)).count("mkldnn._linear_pointwise") == 3  # forward, two gradients
    assert "aten.mm" not in ops_of(lambda: lin.linear(x, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own bf16 products
        out = lin.linear(x, w)
    assert out.dtype == torch.bfloat16
    assert "mkldnn._linear_pointwise" not in ops_of(lambda: lin.linear(x.double(), w.double()))


@needs_onednn
def test_while_compiling_the_products_are_operators_of_their_own(backend, monkeypatch):
    """Inside torch.compile the product and its backward are the ``modulm::`` custom operators
    (inductor calls them as external kernels); with torch's BLAS chosen, plain ``mm``."""
    x, w = torch.randn(8, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for name, expected in (("onednn", ["modulm.onednn_linear", "modulm.onednn_input_grad",
                                        "modulm.onednn_weight_grad"]), ("blas", ["aten.mm"] * 3)):
        backend(name)
        with Ops() as ops:
            lin.linear(x, w).sum().backward()
        assert [op for op in ops.names if op.startswith("modulm.") or op == "aten.mm"] == expected, name


@needs_onednn
@pytest.mark.slow
def test_compiled_products_equal_eager_ones(backend):
    backend("onednn")
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 40, 24, generator=g), torch.randn(56, 24, generator=g)
    grad = torch.randn(2, 40, 56, generator=g)
    results = []
    for fn in (lin.linear, torch.compile(lin.linear, fullgraph=True)):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = fn(xi, wi)
        out.backward(grad)
        results.append((out.detach(), xi.grad, wi.grad))
    for got, want in zip(*results):
        assert torch.equal(got, want)  # the same kernels, in or out of the graph


@needs_onednn
def test_small_products_stay_with_blas_and_large_ones_take_onednn(backend):
    backend("onednn", min_macs=lin.ONEDNN_MIN_MACS)
    w, step, batch = torch.randn(128, 128), torch.randn(1, 128), torch.randn(256, 128)
    with Ops() as ops:
        lin.linear(step, w)  # a decoding step: 16 Ki multiply-adds
    assert "aten.mm" in ops.names and "mkldnn._linear_pointwise" not in ops.names
    with Ops() as ops:
        lin.linear(batch, w)  # 4 Mi
    assert ops.names == ["mkldnn._linear_pointwise"]


@needs_onednn
def test_no_grad_and_frozen_inputs(backend):
    backend("onednn")
    x, w = torch.randn(5, 7), torch.randn(3, 7)
    with torch.no_grad():
        out = lin.linear(x.requires_grad_(), w)
    assert out.grad_fn is None
    x = torch.randn(5, 7, requires_grad=True)
    lin.linear(x, w).sum().backward()  # frozen weight: only x's gradient
    torch.testing.assert_close(x.grad, torch.ones(5, 3) @ w)
    w = w.clone().requires_grad_()
    lin.linear(torch.ones(5, 7), w).sum().backward()
    torch.testing.assert_close(w.grad, torch.full((3, 7), 5.0))


@needs_onednn
def test_onednn_is_deterministic_and_close_to_blas_in_a_model(backend):
    from modulm_transformer import TransformerLM

    ids = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(0))
    results = {}
    for name in ("blas", "onednn", "onednn"):
        backend(name)
        torch.manual_seed(0)
        model = TransformerLM(97, 32, 64, 2, 4, 160)
        loss = model(ids, targets=ids)
        loss.backward()
        results.setdefault(name, []).append((loss.detach(), [p.grad for p in model.parameters()]))
    (again,), (first, second) = results["blas"], results["onednn"]
    assert torch.equal(first[0], second[0]) and all(map(torch.equal, first[1], second[1]))
    torch.testing.assert_close(first[0], again[0], rtol=1e-5, atol=0)
    for got, want in zip(first[1], again[1]):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


@needs_onednn
def test_flop_counter_counts_the_onednn_products(backend):
    backend("onednn")
    x, w = torch.randn(6, 10, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        lin.linear(x, w).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 60 * 16 * 8
