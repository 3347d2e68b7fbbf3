"""A third-party plugin for tests/test_third_party_plugin.py: what the built-ins do, from outside.

* command ``acme-count FILE --tokenizer DIR``: counts the tokens of a text file with the registry's
  tokenizer kind (whichever tokenizer plugin is installed);
* exporter ``acme-npz``: the built-in transformer's weights as one numpy ``.npz``;
* tokenizer ``acme-bytes``: one token per UTF-8 byte, saved as a one-line ``acme-bytes.json``.

Nothing heavy is imported at the top: every ``modulm`` command loads this module.
"""

from modulm import hookimpl


@hookimpl
def modulm_register_components(registry):
    registry.exporter("acme-npz", "modulm_acme.parts:NpzExporter")
    registry.tokenizer("acme-bytes", "modulm_acme.parts:ByteTokenizer")


@hookimpl
def modulm_add_commands(subparsers, registry):
    p = subparsers.add_parser("acme-count", help="count the tokens of a text file")
    p.add_argument("file")
    p.add_argument("--tokenizer", required=True, metavar="DIR")
    p.add_argument("--component", default="acme-bytes", help="the tokenizer component that loads DIR")
    p.set_defaults(func=lambda args: _count(args, registry))


def _count(args, registry) -> int:
    from pathlib import Path

    from modulm.errors import ModulmError

    path = Path(args.file)
    if not path.is_file():
        raise ModulmError(f"{path}: file not found")
    tokenizer = registry.get("tokenizer", args.component).factory.load(args.tokenizer)
    print(f"{path.name}: {len(tokenizer.encode(path.read_text(encoding='utf-8')))} tokens")
    return 0
