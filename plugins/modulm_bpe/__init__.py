"""modulm built-in plugin ``bpe``: byte-level BPE training and a GPT-2-compatible tokenizer.

* :func:`train_bpe` -- learn ``(vocab, merges)`` from text files (CS336 §2.4 rules).
* :class:`Tokenizer` -- encode/decode with a vocabulary and merges; GPT-2 file layout.
* :class:`BPETokenizer` -- the registered ``tokenizer`` component ``"bpe"``.
* ``modulm tokenizer train|encode|decode|info`` -- the command this plugin adds (docs/tokenizer.md).

The names are imported on first use, so loading the plugin (every ``modulm`` command does) is cheap.
"""

from modulm import hookimpl
from modulm.lazy import lazy_attributes

_HOMES = {"BPETokenizer": "modulm_bpe.component", "GPT2_PATTERN": "modulm_bpe.pretokenize",
          "Tokenizer": "modulm_bpe.tokenizer", "train_bpe": "modulm_bpe.train"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_attributes(__name__, _HOMES)


@hookimpl
def modulm_register_components(registry):
    registry.tokenizer("bpe", "modulm_bpe.component:BPETokenizer")


@hookimpl
def modulm_add_commands(subparsers, registry):
    from modulm_bpe.cli import add_tokenizer_command

    add_tokenizer_command(subparsers, registry)
