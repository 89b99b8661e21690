"""The lock of one output within the process that holds it: taking it again is a no-op, the process never sees its
own lock as another writer's, and releasing it removes the file and frees it."""

import os

from posttrain.runs import locks


def test_the_holder_takes_its_own_lock_again_and_never_sees_it_as_busy(tmp_path):
    lock_file = tmp_path / ".run.lock"
    locks.acquire(lock_file, "run folder")
    try:
        locks.acquire(lock_file, "run folder")  # a second claim by the same command, e.g. run_method after a check
        assert locks.holder(lock_file) is None
        locks.refuse_if_busy(lock_file, "run folder")
        assert lock_file.read_text().splitlines()[0] == str(os.getpid())
    finally:
        locks.release(lock_file)
    assert not lock_file.exists()
    locks.acquire(lock_file, "run folder")  # free again
    locks.release(lock_file)
