"""`bertmath` command line: a thin shell that parses arguments and calls the Python API.

A `BertmathError` becomes one line on stderr and exit status 2 (config) or 1 (other); bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import BertmathError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (sections model:, data:, train:)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")


def cmd_params(args) -> int:
    from .config import load_config
    from .model import parameter_counts, parameter_table

    config = load_config(args.config, args.overrides).model
    rows, totals = parameter_table(config), parameter_counts(config)
    if args.json:
        print(json.dumps({"parts": dict(rows), "totals": totals}, indent=2))
        return 0
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'part':<{width}}{'parameters':>14}")
    for name, count in rows:
        print(f"{name:<{width}}{count:>14,}")
    print("-" * (width + 14))
    labels = {
        "bert_for_masked_lm": "BertForMaskedLM (tied decoder counted once)",
        "bert_for_masked_lm_decoder_counted_separately": "BertForMaskedLM (decoder counted separately)",
        "encoder": "encoder alone (BertModel, no pooler)",
        "encoder_with_pooler": "encoder with BERT's pooler",
    }
    for key, label in labels.items():
        print(f"{label:<48}{totals[key]:>14,}  ({totals[key] / 1e6:.1f}M)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertmath", description="BERT encoder: the math, pretraining, fill-mask.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("params", help="print parameter counts per module for a config")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BertmathError as e:
        print(f"bertmath {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"bertmath {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
