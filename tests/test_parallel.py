"""fork_map: order, state inherited by the workers, errors surfaced."""

import os

import pytest

from lrpipe.parallel import fork_map


def test_fork_map_keeps_order_and_uses_workers():
    table = {i: i * i for i in range(50)}  # inherited through fork, never pickled
    out = list(fork_map(lambda i: (table[i], os.getpid()), list(range(50)), workers=2))
    assert [v for v, _ in out] == [i * i for i in range(50)]
    assert os.getpid() not in {pid for _, pid in out}


def test_fork_map_one_worker_is_plain_map():
    assert list(fork_map(lambda x: (x, os.getpid()), [1, 2], workers=1)) == [(1, os.getpid()), (2, os.getpid())]


def test_fork_map_raises_the_workers_error():
    def boom(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    with pytest.raises(ValueError, match="bad item 3"):
        list(fork_map(boom, list(range(10)), workers=2))
