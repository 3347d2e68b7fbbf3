"""``modulm checkpoint consolidate RUN_DIR/checkpoint_N OUT.pt``: one file from a sharded checkpoint.

An fsdp run saves its periodic and best checkpoints as DCP directories, one shard per process
(see docs/distributed.md). ``consolidate`` reads such a directory in this one process, without
building the model, and writes the single-file checkpoint that ``generate``, ``export``, ``info``
and ``load_checkpoint`` read (and that any run, of any strategy and world size, resumes from).
"""

from __future__ import annotations

from pathlib import Path

from modulm.errors import ModulmError


def register(subparsers) -> None:
    p = subparsers.add_parser("checkpoint", help="work with checkpoints (consolidate a sharded one)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser("consolidate", help="write a sharded (fsdp) checkpoint directory as one .pt file")
    c.add_argument("checkpoint", help="a sharded checkpoint directory, e.g. RUN_DIR/checkpoint_1000")
    c.add_argument("out", help="the single-file checkpoint to write, e.g. model.pt")
    c.set_defaults(func=consolidate)


def consolidate(args) -> int:
    import torch

    from modulm import sharded_checkpoint
    from modulm.fileio import atomic_write

    source, out = Path(args.checkpoint), Path(args.out)
    if not source.is_dir():
        raise ModulmError(f"{source}: not a sharded checkpoint directory (a .pt file is already one file)")
    if out.is_dir():
        raise ModulmError(f"{out}: is a directory; give the path of the .pt file to write")
    state = sharded_checkpoint.consolidate(source)
    atomic_write(out, lambda fh: torch.save(state, fh))
    params = sum(t.numel() for t in state["model"].values())
    print(f"wrote {out}: iteration {state['iteration']}, {len(state['model'])} tensors, {params:,} parameters")
    return 0
