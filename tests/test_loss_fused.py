"""linear_cross_entropy: the LM head fused with the loss equals the two steps (value and gradients)
for every shape, chunking, dtype and grad mode; and the model and trainer use it."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import modulm.functional.loss as loss_module
from modulm.functional.linear import linear
from modulm.functional.loss import cross_entropy, linear_cross_entropy
from modulm.kinds import takes_targets
from modulm_transformer import TransformerLM


def case(seed: int, lead: tuple[int, ...], d: int, vocab: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*lead, d, generator=g) * 2).to(dtype)
    weight = torch.randn(vocab, d, generator=g).to(dtype)
    targets = torch.randint(0, vocab, lead, generator=g)
    return hidden, weight, targets


def two_steps(hidden, weight, targets, scale=1.0):
    """Value and gradients of the unfused formulation (the head's product as a model's Linear forms it)."""
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = cross_entropy(linear(h, w), targets)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


def fused(hidden, weight, targets, scale=1.0):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, targets)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


@given(st.integers(0, 2**31 - 1), st.lists(st.integers(1, 5), min_size=1, max_size=2), st.integers(1, 9),
       st.integers(1, 30), st.integers(1, 64), st.sampled_from([1.0, 0.25, -3.0]))
def test_equals_the_head_then_the_loss_for_any_chunking(seed, lead, d, vocab, chunk_elements, scale):
    hidden, weight, targets = case(seed, tuple(lead), d, vocab)
    want = two_steps(hidden, weight, targets, scale)
    saved = loss_module._CPU_FUSED_CHUNK_ELEMENTS, loss_module._MIN_FUSED_ROWS
    loss_module._CPU_FUSED_CHUNK_ELEMENTS, loss_module._MIN_FUSED_ROWS = chunk_elements, 1  # many chunks
    try:
        got = fused(hidden, weight, targets, scale)
    finally:
        loss_module._CPU_FUSED_CHUNK_ELEMENTS, loss_module._MIN_FUSED_ROWS = saved
    assert got[0].dtype == torch.float64 and got[0].dim() == 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows, d, vocab", [(2048, 64, 2048), (700, 32, 10000)])  # one chunk, several
def test_float32_is_as_accurate_as_the_two_steps(rows, d, vocab):
    """Against the float64 computation, the fused float32 loss and gradients are within 2e-6 (relative
    to the largest entry) and no less accurate than the two float32 steps (which round differently:
    the from-scratch loss evaluates exp as exp2, the fused one takes torch's softmax kernel)."""
    hidden, weight, targets = case(0, (rows,), d, vocab, torch.float32)
    weight = weight * 0.1
    assert loss_module._fused_chunk_rows(rows, vocab, torch.device("cpu")) == (rows if vocab == 2048 else 419)
    truth = fused(hidden.double(), weight.double(), targets)
    for got, unfused, exact in zip(fused(hidden, weight, targets), two_steps(hidden, weight, targets), truth):
        assert got.dtype == torch.float32
        scale = exact.abs().max().item()
        error = (got.double() - exact).abs().max().item() / scale
        unfused_error = (unfused.double() - exact).abs().max().item() / scale
        assert error <= 2e-6 and error <= 1.5 * unfused_error + 1e-8, (error, unfused_error)


def test_bfloat16_inputs_compute_the_loss_in_float32_and_round_the_gradients_once():
    hidden, weight, targets = case(1, (6, 5), 8, 40, torch.bfloat16)
    got, want = fused(hidden, weight, targets), two_steps(hidden, weight, targets)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_targets_whose_probability_underflows_keep_exact_finite_losses(dtype):
    """The CPU path reads the loss off the softmax: where the target's probability underflows
    (target logits 300 to 10^4 below the row's maximum here) it must still be the exact loss."""
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(40, 3, generator=g).to(dtype)
    weight = torch.randn(9, 3, generator=g).to(dtype)
    spread = torch.tensor([1.0, 300.0, 1e4], dtype=dtype).repeat_interleave(torch.tensor([14, 13, 13]))
    hidden = hidden * spread[:, None]  # rows with ordinary, large and huge logits
    targets = (hidden @ weight.t()).argmin(dim=1)  # the least likely token of every row
    want = two_steps(hidden, weight, targets)
    got = fused(hidden, weight, targets)
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.isfinite(got[0]) and got[0] > 1000
    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=0)
    for g_, w_ in zip(got[1:], want[1:]):
        torch.testing.assert_close(g_, w_, rtol=0, atol=rtol * w_.abs().max().item())
    for row in (0, 20, 39):  # each row's loss alone: an ordinary, a large and a huge one
        one = slice(row, row + 1)
        torch.testing.assert_close(linear_cross_entropy(hidden[one], weight, targets[one]),
                                   cross_entropy(hidden[one] @ weight.t(), targets[one]), rtol=rtol, atol=0)


def test_gradients_only_for_what_requires_them_and_none_without_grad():
    hidden, weight, targets = case(2, (4, 3), 5, 11)
    want_loss, want_h, want_w = two_steps(hidden, weight, targets)
    h = hidden.clone().requires_grad_()
    linear_cross_entropy(h, weight, targets).backward()  # a frozen head
    torch.testing.assert_close(h.grad, want_h)
    w = weight.clone().requires_grad_()
    linear_cross_entropy(hidden, w, targets).backward()
    torch.testing.assert_close(w.grad, want_w)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, w, targets), want_loss)
    assert not linear_cross_entropy(hidden, weight, targets).requires_grad


def test_interleaved_calls_keep_their_own_gradients():
    """The reused CPU workspace holds nothing a later backward needs."""
    first, second = case(3, (9,), 4, 13), case(4, (20,), 4, 7)
    want_first, want_second = two_steps(*first), two_steps(*second)
    leaves = [(a.clone().requires_grad_(), b.clone().requires_grad_(), t) for a, b, t in (first, second)]
    losses = [linear_cross_entropy(*leaf) for leaf in leaves]
    losses[0].backward()
    losses[1].backward()
    for (h, w, _), want in zip(leaves, (want_first, want_second)):
        torch.testing.assert_close(h.grad, want[1])
        torch.testing.assert_close(w.grad, want[2])


def test_float64_passes_gradcheck_and_autocast_runs_the_two_steps():
    hidden, weight, targets = case(5, (2, 3), 4, 6)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: linear_cross_entropy(a, b, targets), (h, w))
    h32, w32 = hidden.detach().float(), weight.detach().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h32, w32, targets)
        logits = h32 @ w32.t()
    assert logits.dtype == torch.bfloat16 and got.dtype == torch.float32
    assert torch.equal(got, cross_entropy(logits, targets))


def test_empty_batch_is_nan_with_zero_gradients_and_mismatched_shapes_are_an_error():
    h, w = torch.randn(0, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.zeros(0, dtype=torch.int64))
    assert torch.isnan(loss)
    loss.backward()
    assert torch.equal(w.grad, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="do not match hidden"):
        linear_cross_entropy(torch.randn(2, 3, 4), w, torch.zeros(2, 4, dtype=torch.int64))


@pytest.mark.parametrize("options", [{}, {"tie_embeddings": True}, {"logit_softcap": 3.0}])
def test_the_model_returns_the_loss_of_its_logits_with_the_same_gradients(options):
    torch.manual_seed(0)
    model = TransformerLM(50, 16, 32, 2, 4, 64, **options).double()
    ids, targets = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    want = cross_entropy(model(ids), targets)
    want.backward()
    wanted = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    got = model(ids, targets=targets)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, wanted[name], rtol=1e-10, atol=1e-12, msg=name)
    assert takes_targets(model)
    with pytest.raises(ValueError, match="not both"):
        model(ids, model.new_kv_cache(3), targets=targets)


def test_takes_targets_reads_the_forward_signature():
    class Plain(torch.nn.Module):
        def forward(self, token_ids):
            return token_ids

    class Fused(Plain):
        def forward(self, token_ids, *, targets=None):
            return token_ids

    assert not takes_targets(Plain()) and takes_targets(Fused()) and not takes_targets(object())


def test_workspace_reuses_one_buffer_per_purpose_and_grows_when_needed():
    from modulm.functional.workspace import workspace
    cpu = torch.device("cpu")
    first = workspace("test-a", (4, 5), torch.float32, cpu)
    again = workspace("test-a", (3, 2), torch.float32, cpu)
    assert again.data_ptr() == first.data_ptr() and again.shape == (3, 2) and again.is_contiguous()
    other = workspace("test-b", (4, 5), torch.float32, cpu)
    assert other.data_ptr() != first.data_ptr()  # purposes never share memory
    grown = workspace("test-a", (50,), torch.float32, cpu)
    assert grown.numel() == 50 and grown.data_ptr() != first.data_ptr()
    assert workspace("test-a", (2,), torch.float64, cpu).dtype == torch.float64


def test_evaluation_through_the_fused_loss_equals_the_logits_loss(monkeypatch):
    import contextlib

    import numpy as np

    import modulm.evaluate
    from modulm.evaluate import evaluate
    torch.manual_seed(0)
    model = TransformerLM(40, 12, 16, 1, 2, 32)
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 40, (3, 13)), rng.integers(0, 40, (1, 7)), np.zeros((0, 13), dtype=np.int64)]
    cpu = torch.device("cpu")
    fused_result = evaluate(model, iter(windows), cpu, contextlib.nullcontext)
    monkeypatch.setattr(modulm.evaluate, "takes_targets", lambda model: False)
    logits_result = evaluate(model, iter(windows), cpu, contextlib.nullcontext)
    assert fused_result.tokens == logits_result.tokens == 3 * 12 + 6
    assert fused_result.loss == pytest.approx(logits_result.loss, rel=1e-6)


def test_real_tensors_keep_their_chunks_under_a_dispatch_mode_and_fake_ones_run_as_one(monkeypatch):
    """A FlopCounterMode over a real step must not turn the chunked loss into one vocab-wide buffer;
    fake tensors (activation sizing) take one chunk: the same operations, no memory."""
    from torch.utils.flop_counter import FlopCounterMode

    from modulm.activations import _fake_modes

    steps = []
    chunk_rows = loss_module._fused_chunk_rows
    monkeypatch.setattr(loss_module, "_fused_chunk_rows", lambda *a, **k: steps.append(chunk_rows(*a, **k)) or steps[-1])
    rows, vocab, d = 3000, 4096, 8  # 2^22 elements a chunk: 1024 rows, so three chunks
    hidden, weight = torch.randn(rows, d, requires_grad=True), torch.randn(vocab, d, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))
    with FlopCounterMode(display=False):
        linear_cross_entropy(hidden, weight, targets)
    fake, no_data = _fake_modes()  # the modes activation sizing runs under
    with fake, no_data:
        linear_cross_entropy(fake.from_tensor(hidden).requires_grad_(), fake.from_tensor(weight).requires_grad_(),
                             fake.from_tensor(targets))
    assert steps == [1024, rows]
