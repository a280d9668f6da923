"""Random draws in chunks that equal the draws made all at once.

Methods drew their randomness up front (all masks' grids, then all shifts; all baseline rows,
then all path points), which holds O(samples) memory. To stream them without changing a
seeded result, each block of draws gets its own generator, positioned where that block began
in the original sequence; drawing a block chunk by chunk from its generator gives the same
numbers as one big draw (NumPy's generators continue their stream across calls).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

# Values drawn per step while skipping a block whose length in words is not known up front.
_SKIP_CHUNK = 2**20

Draw = Callable[[np.random.Generator, int], object]


def block_generators(
    rng: np.random.Generator, blocks: list[tuple[int, Draw | None]]
) -> list[np.random.Generator]:
    """One generator per block, at the position where that block began in ``rng``'s stream.

    ``blocks`` are ``(count, draw)``: the block draws ``count`` values with ``draw(gen, n)``
    (all blocks one after the other, as the original code did). ``draw=None`` means one
    64-bit word per value (``gen.random``), which is skipped in O(1); other blocks are skipped
    by drawing them chunk by chunk (O(count) time, O(chunk) memory). ``rng`` is not advanced.
    """
    current = copy.deepcopy(rng)
    positioned = []
    for index, (count, draw) in enumerate(blocks):
        positioned.append(copy.deepcopy(current))
        if index == len(blocks) - 1:
            break  # nothing follows the last block
        state = current.bit_generator.state
        if (
            draw is None
            and hasattr(current.bit_generator, "advance")
            and not state.get("has_uint32", 0)
        ):
            current.bit_generator.advance(count)  # exact: doubles take one word each
            continue
        draw = draw or (lambda gen, n: gen.random(n))
        for start in range(0, count, _SKIP_CHUNK):
            draw(current, min(_SKIP_CHUNK, count - start))
    return positioned
