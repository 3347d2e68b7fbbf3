"""``modulm compare RUN_OR_SWEEP_DIR... [--sort KEY] [--format md|csv|json] [--plot OUT.png]``.

One table of runs read from their run directories (see :mod:`modulm.sweep.results` for the columns),
and with ``--plot`` their validation loss on one figure (the ``plot`` extra).
"""

from __future__ import annotations

from modulm.plot import X_AXES


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="one table (and plot) of several runs or sweeps",
                              description="Compare run directories and sweep directories: the settings that differ, "
                                          "parameters, tokens, time, tokens/s, final and best held-out loss and "
                                          "bits/byte, and whether a run diverged.")
    p.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run directories or sweep directories")
    p.add_argument("--sort", metavar="KEY", help="sort by this column (e.g. final_val_loss, lr, params)")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md", help="table format (default md)")
    p.add_argument("--plot", metavar="OUT.png", help="also draw every run's validation loss on one figure")
    p.add_argument("--x", choices=tuple(X_AXES), default="steps", help="plot x axis: steps (default), time or tokens")
    p.add_argument("--log", action="store_true", help="plot loss on a log scale")
    p.add_argument("--logx", action="store_true", help="plot the x axis on a log scale")
    p.add_argument("--title", help="plot title")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from modulm.plot import check_plot_path
    from modulm.sweep.results import collect, plot, render, table

    if args.plot:
        check_plot_path(args.plot, "--plot")  # before the table is printed
    rows, differing = collect(args.runs)
    header, body = table(rows, differing, args.sort)
    sys.stdout.write(render(header, body, args.format))
    if args.plot:
        out = plot(rows, differing, args.plot, x=args.x, log=args.log, log_x=args.logx, title=args.title)
        print(f"wrote {out}", file=sys.stderr)
    return 0
