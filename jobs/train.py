"""Entry point for `ray job submit --working-dir . -- python jobs/train.py [raypar train options]`.

The same command as `raypar train` (see `python jobs/train.py --help`). Inside a Ray job it attaches to the job's
cluster (RAY_ADDRESS), never a private local one. The exit code and the last line say whether training succeeded.
"""
import os
import sys

# run the code shipped with --working-dir, not whatever raypar the cluster has installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raypar.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
