"""``modulm tokenizer train|encode|decode|info``: the BPE tokenizer from the command line (docs/tokenizer.md).

Added to ``modulm`` by this plugin's ``modulm_add_commands`` hook; ``-p no:bpe`` removes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_tokenizer_command(subparsers, registry) -> None:
    """Add ``modulm tokenizer`` and its actions to ``subparsers``."""
    p = subparsers.add_parser("tokenizer", help="train a BPE tokenizer, encode, decode, describe")
    actions = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _missing_action(p))

    train = actions.add_parser("train", help="train a byte-level BPE tokenizer on UTF-8 text files")
    train.add_argument("--input", required=True, nargs="+", metavar="FILE", help="UTF-8 text files (plain or .xz)")
    train.add_argument("--vocab-size", required=True, type=int, metavar="N",
                       help="vocabulary size, counting special tokens and the 256 bytes")
    train.add_argument("--special-token", action="append", default=[], metavar="TOKEN", dest="special_tokens",
                       help="a special token, e.g. '<|endoftext|>' (repeatable)")
    train.add_argument("--out", required=True, metavar="DIR", help="directory to write vocab.json, merges.txt, special_tokens.json")
    train.add_argument("--workers", type=int, default=None, metavar="N",
                       help="pre-tokenization processes (default: by input size and CPUs)")
    train.add_argument("--sample-bytes", type=int, default=16 << 20, metavar="N",
                       help="measure bytes/token on the first N bytes of each input (default: 16 MiB; 0: skip)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bars (shown on a terminal)")
    train.set_defaults(func=run_train)

    encode = actions.add_parser("encode", help="print the token ids of a text")
    encode.add_argument("directory", metavar="DIR", help="a saved tokenizer directory")
    encode.add_argument("text", nargs="?", help="text to encode (default: --input FILE, else standard input)")
    encode.add_argument("--input", metavar="FILE", help="encode this UTF-8 file")
    encode.add_argument("--tokens", action="store_true", help="print each id with its bytes, one a line")
    encode.set_defaults(func=run_encode)

    decode = actions.add_parser("decode", help="print the text of token ids")
    decode.add_argument("directory", metavar="DIR", help="a saved tokenizer directory")
    decode.add_argument("ids", nargs="*", metavar="ID", help="token ids (default: read from standard input)")
    decode.set_defaults(func=run_decode)

    info = actions.add_parser("info", help="describe a saved tokenizer")
    info.add_argument("directory", metavar="DIR")
    info.set_defaults(func=run_info)


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_train(args) -> int:
    import os
    import tempfile
    import time

    from modulm.errors import ModulmError
    from modulm.fileio import plain_copy
    from modulm_bpe import Tokenizer, train_bpe
    from modulm_bpe.corpus import check_inputs

    check_inputs(args.input)  # every named file exists, before anything is decompressed or written
    with tempfile.TemporaryDirectory(prefix="modulm-bpe-") as scratch:
        inputs = [plain_copy(Path(path), Path(scratch)) for path in args.input]
        if not any(os.path.getsize(p) for p in inputs):
            raise ModulmError(f"{', '.join(args.input)}: no text to train on (the input is empty)")
        started = time.perf_counter()
        vocab, merges = train_bpe(inputs, args.vocab_size, args.special_tokens,
                                  num_workers=args.workers, progress=not args.no_progress and sys.stderr.isatty())
        elapsed = time.perf_counter() - started
        tokenizer = Tokenizer(vocab, merges, args.special_tokens)
        tokenizer.save(args.out)
        longest = max((a + b for a, b in merges), key=len, default=b"")
        total_bytes = sum(os.path.getsize(p) for p in inputs)
        print(f"trained in {elapsed:.2f} s on {len(inputs)} file(s), {total_bytes / 1e6:.2f} MB "
              f"({total_bytes / 1e6 / max(elapsed, 1e-9):.2f} MB/s)")
        print(f"vocab size {len(vocab)} (special tokens {len(args.special_tokens)}, bytes 256, merges {len(merges)})")
        if len(vocab) < args.vocab_size:
            print(f"modulm: warning: {len(vocab)} tokens, fewer than --vocab-size {args.vocab_size}: the input has "
                  "no more pairs of tokens to merge", file=sys.stderr)
        print(f"longest token {len(longest)} bytes: {longest.decode('utf-8', errors='replace')!r}")
        if args.sample_bytes > 0:
            sampled, tokens = _bytes_per_token(tokenizer, inputs, args.sample_bytes)
            if tokens:
                print(f"bytes/token {sampled / tokens:.3f} ({tokens} tokens over {sampled} bytes of the input)")
    print(f"wrote {args.out}")
    return 0


def _bytes_per_token(tokenizer, paths, limit: int) -> tuple[int, int]:
    import os

    from modulm_bpe.corpus import iter_decoded

    sampled = tokens = 0
    for path in paths:
        end = min(os.path.getsize(path), limit)
        text = "".join(iter_decoded(path, 0, end, allow_partial_end=True))
        sampled += len(text.encode("utf-8"))
        tokens += len(tokenizer.encode(text))
    return sampled, tokens


def _load(directory: str):
    from modulm_bpe import Tokenizer

    return Tokenizer.load(directory)


def run_encode(args) -> int:
    from modulm.errors import ModulmError

    tokenizer = _load(args.directory)
    if args.text is not None and args.input is not None:
        raise ModulmError("give the text or --input FILE, not both")
    if args.text is not None:
        text = args.text
    elif args.input is not None:
        path = Path(args.input)
        if not path.is_file():
            raise ModulmError(f"input file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ModulmError(f"{path}: not valid UTF-8 at byte offset {exc.start}") from None
    else:
        text = sys.stdin.read()
    ids = tokenizer.encode(text)
    if args.tokens:
        for token_id in ids:
            print(f"{token_id}\t{tokenizer.token_bytes(token_id)!r}")
    else:
        print(" ".join(map(str, ids)))
    return 0


def run_decode(args) -> int:
    from modulm.errors import ModulmError

    tokenizer = _load(args.directory)
    words = args.ids if args.ids else sys.stdin.read().split()
    ids = []
    for word in words:
        try:
            ids.append(int(word.strip(",[]")))
        except ValueError:
            raise ModulmError(f"not a token id: {word!r}") from None
    sys.stdout.write(tokenizer.decode(ids))
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def run_info(args) -> int:
    tokenizer = _load(args.directory)
    special_ids = set(tokenizer.special_token_ids.values())
    longest = max((t for i, t in tokenizer.vocab.items() if i not in special_ids), key=len)
    print(f"tokenizer   {args.directory}")
    print(f"vocab size  {tokenizer.vocab_size}")
    print(f"merges      {len(tokenizer.merges)}")
    specials = ", ".join(f"{t!r}={i}" for t, i in tokenizer.special_token_ids.items()) or "none"
    print(f"specials    {specials}")
    print(f"longest     {len(longest)} bytes: {longest.decode('utf-8', errors='replace')!r}")
    print(f"fingerprint {tokenizer.fingerprint()}")
    return 0
