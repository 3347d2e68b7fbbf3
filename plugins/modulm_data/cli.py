"""``modulm data prepare|dummy|split|inspect``: the dataset utilities (see docs/data.md).

Added to ``modulm`` by this plugin's ``modulm_add_commands`` hook; ``-p no:data`` removes it. The
tokenizer a command reads is loaded by a ``tokenizer`` component of the registry (``--tokenizer-component``,
default: the one registered, else ``bpe``), so a third-party tokenizer plugin serves these commands too.
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import functools


def add_data_command(subparsers, registry) -> None:
    """Add ``modulm data`` and its actions to ``subparsers``; tokenizers come from ``registry``."""
    p = subparsers.add_parser("data", help="prepare, generate, split and inspect token files")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _missing_action(p))

    prepare = actions.add_parser("prepare", help="encode text files into a .npy token file")
    prepare.add_argument("--tokenizer", required=True, metavar="DIR", help="directory of a saved tokenizer")
    _tokenizer_component_argument(prepare)
    prepare.add_argument("--input", required=True, nargs="+", metavar="FILE", help="UTF-8 text files (plain or .xz)")
    prepare.add_argument("--output", required=True, metavar="OUT.npy", help="token file to write")
    prepare.add_argument("--dtype", default="auto", choices=("auto", "uint16", "uint32"),
                         help="token dtype; auto is uint16 when the vocabulary fits (default: auto)")
    prepare.add_argument("--workers", type=int, default=None, metavar="N",
                         help="encoding processes (default: usable CPUs, at most 8)")
    prepare.set_defaults(func=functools.partial(run_prepare, registry=registry))

    dummy = actions.add_parser("dummy", help="write a .npy file of uniformly random token ids")
    dummy.add_argument("--output", required=True, metavar="OUT.npy")
    dummy.add_argument("--size", required=True, type=int, metavar="N", help="number of tokens")
    dummy.add_argument("--vocab-size", required=True, type=int, metavar="V", help="ids are drawn from [0, V)")
    dummy.add_argument("--seed", type=int, default=0, metavar="S")
    dummy.set_defaults(func=run_dummy)

    split = actions.add_parser("split", help="split a .npy token file into train and validation files")
    split.add_argument("--input", required=True, metavar="IN.npy")
    split.add_argument("--train-output", required=True, metavar="A.npy")
    split.add_argument("--val-output", required=True, metavar="B.npy")
    split.add_argument("--val-split", type=float, default=0.1, metavar="F",
                       help="share of tokens (the last ones) for validation (default: 0.1)")
    split.set_defaults(func=run_split)

    inspect = actions.add_parser("inspect", help="show a token file's length, dtype, id range and first tokens")
    inspect.add_argument("file", metavar="FILE")
    inspect.add_argument("--tokenizer", metavar="DIR", help="decode the first tokens with this tokenizer")
    _tokenizer_component_argument(inspect)
    inspect.add_argument("--dtype", default="auto", choices=("auto", "uint16", "uint32", "int32", "int64"),
                         help="dtype of a raw (headerless) token file")
    inspect.add_argument("--show", type=int, default=32, metavar="N", help="how many leading tokens to show")
    inspect.set_defaults(func=functools.partial(run_inspect, registry=registry))


def _tokenizer_component_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer-component", metavar="NAME", default=None,
                        help="the tokenizer component that loads DIR (default: the one registered, else bpe)")


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_prepare(args, registry) -> int:
    from pathlib import Path

    from modulm.errors import ModulmError
    from modulm_data.documents import check_text_file
    from modulm_data.prepare import default_workers, encode_files
    from modulm_data.tokenfile import check_output_path, storage_dtype
    from modulm_data.tokenizers import load_tokenizer

    inputs = [check_text_file(path, "input file") for path in args.input]
    output = check_output_path(args.output)
    if any(output.resolve() == path.resolve() for path in inputs):
        raise ModulmError(f"{output}: the output would overwrite an input file")
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise ModulmError(f"--workers must be >= 1, got {workers}")
    tokenizer = load_tokenizer(args.tokenizer, registry, args.tokenizer_component)
    dtype = storage_dtype(int(tokenizer.vocab_size), args.dtype)
    specials = list(getattr(tokenizer, "special_tokens", []) or [])
    result = encode_files(inputs, tokenizer, output, dtype, workers, specials[0] if specials else None,
                          desc=f"encoding {Path(output).name}")
    print(f"wrote {result.tokens:,} tokens ({result.dtype}) to {output}: {result.bytes:,} bytes of text, "
          f"{result.bytes_per_token:.3f} bytes/token")
    return 0


def run_dummy(args) -> int:
    from modulm_data.tools import make_dummy

    output = make_dummy(args.output, args.size, args.vocab_size, args.seed)
    print(f"wrote {args.size:,} random tokens in [0, {args.vocab_size}) to {output}")
    return 0


def run_split(args) -> int:
    from modulm_data.tools import split_tokens

    counts = split_tokens(args.input, args.train_output, args.val_output, args.val_split)
    print(f"wrote {counts.train:,} tokens to {args.train_output} and {counts.val:,} tokens to {args.val_output}")
    return 0


def run_inspect(args, registry) -> int:
    from modulm_data.tokenizers import load_tokenizer
    from modulm_data.tools import inspect_lines

    tokenizer = load_tokenizer(args.tokenizer, registry, args.tokenizer_component) if args.tokenizer else None
    for line in inspect_lines(args.file, tokenizer, args.dtype, max(args.show, 0)):
        print(line)
    return 0
