"""``modulm plot RUN_DIR... [--out FILE.png] [--x steps|time|tokens] [--log]``: loss curves of runs."""

from __future__ import annotations

X_CHOICES = ("steps", "time", "tokens")


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot train and validation loss of one or several runs",
                              description="Draw the train (solid) and validation (dashed) loss of each run "
                                          "directory's metrics.jsonl on one figure, one colour per run.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or metrics.jsonl files)")
    p.add_argument("--out", default="loss.png", help="image to write; format from the suffix (default loss.png)")
    p.add_argument("--x", choices=X_CHOICES, default="steps", help="x axis: steps (default), time or tokens")
    p.add_argument("--log", action="store_true", help="log-scale loss axis")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=run)


def run(args) -> int:
    from modulm.plot import check_plot_path, plot_runs, save_plot

    check_plot_path(args.out)  # before reading any run
    figure = plot_runs(args.runs, x=args.x, log=args.log, title=args.title)
    print(f"wrote {save_plot(figure, args.out)}")
    return 0
