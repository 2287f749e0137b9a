"""The demo's threshold step in numpy: a Clara Python operator, unchanged from how it
would be written for Clara (`from clara import Driver`), run by `fastio run
examples/demo/pipeline-python.yaml` with the `fastio` module installed.

It reads the volume through a read-only zero-copy view of the producer's pages and
computes the mask straight into its output entry's shared memory: no copy either way.
"""

import os

import numpy as np
from clara import Driver


def execute(driver, payload):
    level = int(os.environ.get("THRESHOLD", "300"))
    volume = payload.fastio_input_entries["volume"].get_numpy()  # read-only, zero-copy
    mask = payload.fastio_output_entries["mask"].as_numpy()  # writable, zero-copy
    np.greater(volume, level, out=mask)  # bool -> uint8, in place
    depth = mask.shape[0]
    slices = np.flatnonzero(mask.reshape(depth, -1).any(axis=1)).astype(np.int32)
    if len(slices):
        found = payload.fastio_output_entries["foreground-slices"]
        found.update_shape([0], [len(slices)])
        found.set_values(slices)


if __name__ == "__main__":
    driver = Driver(execute_handler=execute)
    driver.start()
    driver.wait_for_completion()
