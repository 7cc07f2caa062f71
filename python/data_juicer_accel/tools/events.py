"""placeholder"""

NAME = "events"


def add_parser(subparsers):
    parser = subparsers.add_parser(NAME)
    parser.set_defaults(run=run)
    return parser


def run(args):
    return 0
