"""Two equal sets that iterate in different orders in every process, whatever its hash seed."""

from __future__ import annotations


class CollidingTag(str):
    """A text whose hash is the same as every other tag's.

    A set of them probes past the same slot for each, so it iterates in the order it was filled: two
    equal sets filled in opposite orders print differently in every process. Tags of plain text would
    do so only under some hash seeds, and a test built on them could not tell the code from the seed.
    """

    __slots__ = ()

    def __hash__(self) -> int:
        return 0


def sets_filled_in_two_orders(n: int = 32) -> tuple[list[str], set[str], set[str]]:
    """The tags ``tag-0`` … ``tag-{n-1}``, and one set of them filled forwards, one backwards."""
    tags: list[str] = [CollidingTag(f"tag-{i}") for i in range(n)]
    forward, backward = set(tags), set(reversed(tags))
    assert forward == backward and str(forward) != str(backward), "the two sets print alike"
    return tags, forward, backward
