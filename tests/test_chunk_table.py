"""ChunkTable: ids of many chunks at once, computed once per kept chunk, with bounded memory."""

import threading
import time

import numpy as np

from bertnpu_runtime.tokenize import chunk_table
from bertnpu_runtime.tokenize.chunk_table import ChunkTable


class CountingIds:
    """ids_of_chunk for the tests: one id per character (its code point), counting the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, chunk: str) -> list[int]:
        self.calls.append(chunk)
        return [ord(c) for c in chunk]


def expected(chunks: list[str]) -> list[int]:
    return [ord(c) for chunk in chunks for c in chunk]


def test_ids_back_to_back_and_each_chunk_computed_once():
    ids_of = CountingIds()
    table = ChunkTable(ids_of)
    chunks = ["ab", "c", "", "ab", "def", "c"]
    assert table.ids(chunks).tolist() == expected(chunks)
    assert table.ids(chunks[::-1]).tolist() == expected(chunks[::-1])
    assert sorted(ids_of.calls) == ["", "ab", "c", "def"]
    assert table.ids([]).tolist() == []


def test_long_chunks_are_not_kept_and_do_not_disturb_the_kept_ones():
    ids_of = CountingIds()
    table = ChunkTable(ids_of)
    long = "x" * (chunk_table.MAX_KEPT_CHUNK_CHARS + 1)
    chunks = ["a", long, "bc", long + "y", "d", "a"]
    for _ in range(3):  # kept chunks after an unkept one must keep their ids in later calls
        assert table.ids(chunks).tolist() == expected(chunks)
    assert ids_of.calls.count("bc") == 1 and ids_of.calls.count(long) == 3
    assert len(table) == 3  # a, bc, d


def test_a_full_table_computes_new_chunks_every_time(monkeypatch):
    monkeypatch.setattr(chunk_table, "MAX_KEPT_CHUNKS", 2)
    ids_of = CountingIds()
    table = ChunkTable(ids_of)
    chunks = ["a", "b", "c", "a", "c"]
    for _ in range(2):
        np.testing.assert_array_equal(table.ids(chunks), expected(chunks))
    assert len(table) == 2 and ids_of.calls.count("a") == 1 and ids_of.calls.count("c") == 4


def test_threads_sharing_a_table_get_their_own_ids():
    def slow_ids(chunk: str) -> list[int]:
        time.sleep(0)  # lets another thread run in the middle of adding a chunk
        return [ord(c) for c in chunk]

    table = ChunkTable(slow_ids)
    long = "y" * (chunk_table.MAX_KEPT_CHUNK_CHARS + 1)
    work = [[f"{t}w{i % 37}" + "z" * (i % 3) for i in range(300)] + [long, f"after{t}"] for t in range(8)]
    results: dict[int, list[int]] = {}

    def run(t: int) -> None:
        results[t] = table.ids(work[t]).tolist()

    threads = [threading.Thread(target=run, args=(t,)) for t in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[t] == expected(work[t]) for t in range(len(work)))
