"""The ``fastio`` command, as installed by the wheel: the same Rust code as the binary."""

import os
import signal
import sys


def main() -> None:
    """Runs ``fastio`` with this process's arguments and exits with its status."""
    # Python turns SIGINT into KeyboardInterrupt only when Python code runs, which it
    # does not while the command does; the command gets the default handling instead,
    # as the binary has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from fastio._native import cli_main

    # Operator programs installed beside the script (in the same environment's bin
    # folder, e.g. its python) are found first, as beside the binary; then the programs
    # the wheel carries (the demo's operators), which are not put on PATH.
    program_dirs = [
        os.path.dirname(os.path.abspath(sys.argv[0])),
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "_programs"),
    ]
    sys.exit(cli_main(sys.argv, program_dirs))


if __name__ == "__main__":
    main()
