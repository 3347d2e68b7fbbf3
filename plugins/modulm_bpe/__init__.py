"""modulm built-in plugin ``bpe``: byte-level BPE training and a GPT-2-compatible tokenizer.

* :func:`train_bpe` -- learn ``(vocab, merges)`` from text files (CS336 §2.4 rules).
* :class:`Tokenizer` -- encode/decode with a vocabulary and merges; GPT-2 file layout.
* :class:`BPETokenizer` -- the registered ``tokenizer`` component ``"bpe"``.
"""

from modulm import hookimpl

from modulm_bpe.component import BPETokenizer
from modulm_bpe.pretokenize import GPT2_PATTERN
from modulm_bpe.tokenizer import Tokenizer
from modulm_bpe.train import train_bpe

__all__ = ["BPETokenizer", "GPT2_PATTERN", "Tokenizer", "train_bpe"]


@hookimpl
def modulm_register_components(registry):
    registry.tokenizer("bpe", BPETokenizer)
