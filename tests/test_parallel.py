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


def test_run_phase_splits_resumes_and_waits(tmp_path):
    """Two ranks, six jobs: each rank writes its own (i mod 2), a rerun redoes only missing files, and
    a rank returns only when the other rank's files are there."""
    import threading

    from lrpipe.phases import run_phase

    done = []

    def work(j, f):
        done.append(j)
        f.write_text(str(j * j))

    kw = {"workers": 1, "what": "squares", "poll": 0.02}
    res = {}
    t = threading.Thread(target=lambda: res.update(r1=run_phase(tmp_path, list(range(6)), lambda j: f"{j}.txt", work,
                                                                rank=1, world_size=2, **kw)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and sorted(done) == [1, 3, 5]  # rank 1 did its jobs and waits for rank 0's
    files = run_phase(tmp_path, list(range(6)), lambda j: f"{j}.txt", work, rank=0, world_size=2, **kw)
    t.join(5)
    assert not t.is_alive() and res["r1"] == files and [int(f.read_text()) for f in files] == [0, 1, 4, 9, 16, 25]
    (tmp_path / "4.txt").unlink()
    done.clear()
    run_phase(tmp_path, list(range(6)), lambda j: f"{j}.txt", work, rank=0, world_size=2, **kw)
    assert done == [4]  # resumed: only the missing file
