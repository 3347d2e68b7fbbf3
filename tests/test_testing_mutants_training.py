"""modulm.testing's checks reject broken training parts: optimizers, schedules, data sources,
loggers and tokenizers. Each mutant breaks one rule of one contract, and each test names the rule
the check must report (``match=``), so a mutant caught for the wrong reason fails too. (The model
parts' mutants are in test_testing_mutants.py.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from modulm.assemble import create
from modulm.testing import (check_data_source, check_logger, check_optimizer, check_orthogonalising_optimizer,
                            check_schedule, check_tokenizer)
from tests.kit_support import REGISTRY, write_tokens

def adamw_ignoring_weight_decay(lr: float = 3e-4, weight_decay: float = 0.1, *, params):
    """AdamW whose weight_decay setting never reaches the update."""
    return create(REGISTRY, "optimizer", {"component": "adamw", "lr": lr, "weight_decay": 0.0}, params=params)


class ForgetfulSGD(torch.optim.SGD):
    """SGD with momentum whose state_dict drops the momentum buffers."""

    def __init__(self, lr: float = 0.01, *, params):
        super().__init__([p for _, p in params], lr=lr, momentum=0.9)

    def load_state_dict(self, state):
        pass  # the mutation: the saved momentum buffers are dropped


class AscendingSGD(torch.optim.SGD):
    """Steps up the gradient."""

    def __init__(self, lr: float = 0.01, *, params):
        super().__init__([p for _, p in params], lr=lr, maximize=True)


class DecayEverything(torch.optim.SGD):
    """Decays every parameter, those without a gradient too."""

    def __init__(self, lr: float = 0.01, *, params):
        super().__init__([p for _, p in params], lr=lr)

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.mul_(0.999)


@pytest.mark.parametrize("mutant, rule", [(adamw_ignoring_weight_decay, "weight decay is ignored"),
                                           (ForgetfulSGD, "does not round-trip"),
                                           (AscendingSGD, "expected a decrease"),
                                           (DecayEverything, "whose .grad is None was changed")])
def test_optimizer_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_optimizer(mutant)


def cosine_with_a_jump(*, base_lr: float, max_iterations: int):
    """Cosine warm-up whose value drops to min_lr halfway through the run."""
    cosine = create(REGISTRY, "schedule", "cosine-warmup", base_lr=base_lr, max_iterations=max_iterations)
    return lambda t: cosine(t) if t < max_iterations // 2 else 3e-5


def overshooting_warmup(*, base_lr: float, max_iterations: int):
    return lambda t: base_lr * min(t, 110) / 100


@dataclass
class CountingSchedule:
    """Depends on how often it was called, not only on the iteration."""

    base_lr: float
    calls: int = 0

    def __call__(self, t):
        self.calls += 1
        return self.base_lr / (1 + 1e-3 * self.calls)


def counting(*, base_lr: float, max_iterations: int):
    return CountingSchedule(base_lr)


@pytest.mark.parametrize("mutant, rule", [(cosine_with_a_jump, "a discontinuity"),
                                           (overshooting_warmup, "outside \\[0, base_lr"),
                                           (counting, "not a pure function")])
def test_schedule_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_schedule(mutant)


def test_schedule_check_allows_jumps_when_asked():
    check_schedule(cosine_with_a_jump, max_jump=None)


MemmapSource = REGISTRY.get("data", "memmap").factory


class OffByOneTargets(MemmapSource):
    """Targets shifted by two instead of one."""

    def get_batch(self, split, batch_size, context_length, device="cpu"):
        x, _ = super().get_batch(split, batch_size, context_length + 1, device)
        return x[:, :-1], x[:, 1:].roll(-1, dims=1)


class TargetsFromAnotherWindow(MemmapSource):
    """Targets shifted by one but the last one drawn from elsewhere."""

    def get_batch(self, split, batch_size, context_length, device="cpu"):
        x, y = super().get_batch(split, batch_size, context_length, device)
        y[:, -1] = (y[:, -1] + 1) % self.vocab_size
        return x, y


class Int32Batches(MemmapSource):
    def get_batch(self, split, batch_size, context_length, device="cpu"):
        return tuple(t.int() for t in super().get_batch(split, batch_size, context_length, device))


class NoResume(MemmapSource):
    """Its state_dict is empty, so a resumed source draws from its own seed."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass  # the mutation: the saved sampler state is ignored


@pytest.mark.parametrize("mutant, rule", [(OffByOneTargets, "not the inputs shifted by one"),
                                           (TargetsFromAnotherWindow, "not a contiguous window"),
                                           (Int32Batches, "not int64"),
                                           (NoResume, "no exact resume")])
def test_data_source_check_rejects(mutant, rule, tmp_path):
    with pytest.raises(AssertionError, match=rule):
        check_data_source(mutant, {**write_tokens(tmp_path), "vocab_size": 50})


def test_data_source_check_rejects_ids_beyond_the_vocabulary(tmp_path):
    class IdsPastTheVocabulary(MemmapSource):
        def get_batch(self, split, batch_size, context_length, device="cpu"):
            return tuple(t + self.vocab_size for t in super().get_batch(split, batch_size, context_length, device))

    with pytest.raises(AssertionError, match="ids outside"):
        check_data_source(IdsPastTheVocabulary, {**write_tokens(tmp_path), "vocab_size": 50})


class StrictLogger:
    """Fails on events it does not know, and on a second close."""

    def __init__(self, *, run_dir):
        self.closed = False

    def log(self, event):
        if event["event"] not in ("start", "train", "eval", "message", "end"):
            raise KeyError(event["event"])

    def close(self):
        assert not self.closed
        self.closed = True


class ClosingTwiceLogger(StrictLogger):
    def log(self, event):
        pass  # accepts every event, so only the second close() is wrong


class OutsideLogger(ClosingTwiceLogger):
    def __init__(self, *, run_dir):
        super().__init__(run_dir=run_dir)
        (Path(run_dir).parent / "stray.log").write_text("x")

    def close(self):
        pass  # may be closed twice, so only the stray file is wrong


@pytest.mark.parametrize("mutant, rule", [(StrictLogger, "raised KeyError"),
                                           (ClosingTwiceLogger, "second close"),
                                           (OutsideLogger, "outside its run_dir")])
def test_logger_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_logger(mutant)


BPETokenizer = REGISTRY.get("tokenizer", "bpe").factory


class DropsCarriageReturns(BPETokenizer):
    def decode(self, ids):
        return super().decode(ids).replace("\r", "")


class SplitsSpecialTokens(BPETokenizer):
    def encode(self, text):
        out = []
        for piece in text.split("<|endoftext|>"):
            out += super().encode(piece) + [ord("<")]
        return out[:-1] if out else out


class LosesMergesOnLoad(BPETokenizer):
    """Its load drops the last merges it saved."""

    @classmethod
    def load(cls, directory):
        saved = super().load(directory).tokenizer
        return cls.from_tokenizer(type(saved)(saved._vocab, saved._merges[:-5], saved.special_tokens))


@pytest.mark.parametrize("mutant, rule", [(DropsCarriageReturns, "decode\\(encode"),
                                           (SplitsSpecialTokens, "decode\\(encode|encode_iterable|not one id"),
                                           (LosesMergesOnLoad, "after save/load")])
def test_tokenizer_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_tokenizer(mutant, {"vocab_size": 300})


class MomentumWithoutOrthogonalisation(torch.optim.SGD):
    """A 'Muon' that skips the Newton-Schulz step: plain momentum SGD on the hidden matrices."""

    def __init__(self, lr: float = 0.02, *, params):
        super().__init__([p for _, p in params], lr=lr, momentum=0.95, nesterov=True)


def test_orthogonalisation_check_rejects_a_muon_that_skips_newton_schulz():
    check_orthogonalising_optimizer("muon", registry=REGISTRY)  # the real one passes
    with pytest.raises(AssertionError, match="not orthogonalised"):
        check_orthogonalising_optimizer(MomentumWithoutOrthogonalisation)
