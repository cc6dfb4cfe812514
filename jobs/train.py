"""`ray job submit --working-dir . -- python jobs/train.py [raypar train options]`: the same entry point as
`raypar train`. Inside a Ray job it attaches to the job's cluster (RAY_ADDRESS), never a private local one."""
import sys

from raypar.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
