"""`telucodec config show`: the resolved configuration, with each field's documentation on request."""

from __future__ import annotations

import json

from jobs.cli.common import FORMATTER, add_config_items


def register(sub) -> None:
    c = sub.add_parser("config", help="show the resolved configuration")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    s = csub.add_parser("show", help="print the resolved config (base, then configs, then overrides)",
                        description="Layer the shipped base config, the given configs (a .yaml path or a "
                        "shipped name: base, tiny, gpu) and key=value overrides, check them, and print "
                        "the result. Works from any folder.",
                        epilog="examples:\n  telucodec config show tiny\n"
                        "  telucodec config show gpu train.workers=8 --json\n"
                        "  telucodec config show configs/tiny.yaml prep.sample_rate=24000\n"
                        "  telucodec config show --docs        # every key, documented",
                        formatter_class=FORMATTER)
    add_config_items(s)
    s.add_argument("--docs", action="store_true", help="add each field's documentation as a comment")
    s.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    s.set_defaults(func=show)


def show(args) -> int:
    from jobs.cli.common import load_cli_config
    from pipeline.config import to_dict, to_yaml

    cfg = load_cli_config(args.items)
    if args.json:
        print(json.dumps(to_dict(cfg), indent=2))
    else:
        print(to_yaml(cfg, docs=args.docs), end="")
    return 0
