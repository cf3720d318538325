"""Command line: ``python -m fastgn {bench,accuracy,config}``."""

import argparse
import sys


def main(argv=None):
    from . import _bench, show_config

    parser = argparse.ArgumentParser(
        prog="python -m fastgn",
        description="fastgn command line tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    bench = sub.add_parser(
        "bench", help="time fastgn against the NumPy reference, PyTorch and "
                      "the memory-streaming floor",
        description="Interleaved benchmark of fastgn.group_norm; exits 1 if "
                    "a result does not match the reference.")
    _bench.add_arguments(bench)
    sub.add_parser("accuracy", help="float32 error vs a float64 oracle, "
                                    "against NumPy and PyTorch")
    sub.add_parser("config", help="print fastgn.show_config()")
    args = parser.parse_args(argv)
    if args.command == "config":
        show_config()
        return 0
    if args.command == "accuracy":
        from . import _accuracy
        return _accuracy.run()
    return _bench.run(args)


if __name__ == "__main__":
    sys.exit(main())
