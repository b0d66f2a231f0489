"""Command line interface: ``fastsparse <command>`` or ``python -m fastsparse``.

Commands
--------
demo
    Train the factored and the naive output layer side by side on synthetic
    data, time them and check that they agree (see :mod:`fastsparse._demo`).
"""
import argparse
import sys

from ._validation import check_int, check_real


def _argument(check, convert, what):
    """An argparse type: ``convert`` the text, then the shared validator."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        try:
            return check(value)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


_positive_int = _argument(lambda v: check_int(v, "value", 1), int, "an integer")
_nonnegative_float = _argument(lambda v: check_real(v, "value", 0), float, "a number")


def build_parser():
    """The argument parser of the ``fastsparse`` command.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="fastsparse",
        description="Exact O(d^2) training of output layers with very large "
                    "sparse targets (Vincent et al., NIPS 2015).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    demo = sub.add_parser(
        "demo", help="train the factored and the naive layer side by side",
        description="Train a FactoredOutputLayer and a NaiveOutputLayer with "
                    "the same initial weights on the same synthetic "
                    "minibatches (unit-norm random h, one Zipf-distributed "
                    "target per example), time each layer's step and compare "
                    "their losses and final weights.  Progress goes to "
                    "stderr, the report to stdout.",
)
    demo.add_argument("--n-outputs", type=_positive_int, default=200_000,
                      metavar="D", help="number of outputs (default: %(default)s)")
    demo.add_argument("--n-hidden", type=_positive_int, default=256,
                      metavar="d", help="number of hidden units (default: %(default)s)")
    demo.add_argument("--steps", type=_positive_int, default=40,
                      help="number of step calls, i.e. minibatches (default: "
                           "%(default)s)")
    demo.add_argument("--batch-size", type=_positive_int, default=64,
                      metavar="m", help="examples per step call (default: %(default)s)")
    demo.add_argument("--mode", choices=("online", "batch"), default="batch",
                      help="online: one exact update per example; batch: one "
                           "update per minibatch (default: %(default)s)")
    demo.add_argument("--dtype", choices=("float32", "float64"),
                      default="float32",
                      help="dtype of both layers (default: %(default)s)")
    demo.add_argument("--lr", type=_nonnegative_float, default=None,
                      help="learning rate (sum of the per-example losses); "
                           "default 0.02 (r = 1 - 2 lr ||h||^2 = 0.96 with "
                           "||h|| = 1), lowered in batch mode for large m")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the initial weights and of the data "
                           "(default: %(default)s)")
    demo.add_argument("--threads", type=_positive_int, default=1,
                      help="number of BLAS threads, set with threadpoolctl "
                           "(default: %(default)s)")
    return parser


def main(argv=None):
    """Run the ``fastsparse`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments, default ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 on success, 1 if the run failed (for example a
        step refused because the learning rate is too large).
    """
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo
        try:
            run_demo(n_outputs=args.n_outputs, n_hidden=args.n_hidden,
                     steps=args.steps, batch_size=args.batch_size,
                     mode=args.mode, dtype=args.dtype, lr=args.lr,
                     seed=args.seed, threads=args.threads)
        except (ValueError, FloatingPointError, MemoryError) as exc:
            print(f"fastsparse demo: error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
