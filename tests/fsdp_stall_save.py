"""``modulm`` as torchrun runs it, except that rank 1 stalls inside the sharded save of the
checkpoint directory named by ``$STALL_SAVE`` (after touching ``$STALL_SAVE.stalled`` beside it),
so that tests/test_fsdp.py can kill it there with SIGKILL, as a crash in the middle of a save."""

import os
import sys
import time
from pathlib import Path

from torch.distributed.checkpoint.filesystem import FileSystemWriter

from modulm.cli import main

write_data = FileSystemWriter.write_data


def stalling_write_data(self, plan, planner):
    target = Path(os.environ["STALL_SAVE"])
    if os.environ.get("RANK") == "1" and Path(self.path).resolve() == target.resolve():
        target.with_name(target.name + ".stalled").touch()
        time.sleep(600)
    return write_data(self, plan, planner)


FileSystemWriter.write_data = stalling_write_data

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
