"""Distributed greedy forward selection (Algorithm 2): the same selections as the single-process engine
on 2 and 3 processes (gloo, CPU, one thread each), input errors raised on every rank, and a rank that
dies or hangs mid-selection making the others fail within the timeout.

Process groups are expensive to start (a few seconds each), so each world size is launched once and
runs all of its cases inside; the tests then compare the results case by case.
"""
import datetime
import math
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist

from greedyprune import distributed as D
from greedyprune import greedy_forward_selection
from greedyprune.selection import sharded as S
from greedyprune.selection.scorers import CrossEntropyScorer, LogisticScorer, Placement
from toy_loss import registered

torch.set_num_threads(1)

LOSSES = ("squared", "logistic", "cross_entropy")


def problem(seed, loss, n, m, c=3, dtype=torch.float32, copies=1, integer=False):
    """A random problem; ``copies`` > 1 repeats the n rows that many times (exact duplicates)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, m, c) if loss == "cross_entropy" else (n, m)
    if integer:
        phi = torch.randint(-2, 3, shape, generator=g).to(dtype)
    else:
        phi = torch.randn(shape, generator=g, dtype=dtype) * (2 if loss != "squared" else 1)
    if loss == "cross_entropy":
        y = torch.randint(0, c, (m,), generator=g)
    elif loss == "logistic":
        y = torch.randint(0, 2, (m,), generator=g).to(dtype)
    else:
        y = torch.randn(m, generator=g, dtype=dtype)
        if integer:
            y = y.round()
    return torch.cat([phi] * copies), y


def case(seed, loss, n, m, *, replacement=True, candidates=None, k=None, split=None, fused=True, first_batch=None,
         **kw):
    total = n * kw.get("copies", 1)
    k = k or (total if not replacement else max(2, total // 2 + 3))
    return {"seed": seed, "loss": loss, "n": n, "m": m, "k": k, "replacement": replacement,
            "candidates": candidates, "split": split, "fused": fused, "first_batch": first_batch, "kw": kw}


def make_cases(world):
    cases = []
    g = torch.Generator().manual_seed(world)
    for loss in LOSSES:
        for replacement in (True, False):
            for candidates in (None, 5):
                for seed in range(2):
                    n = int(torch.randint(world, 40, (1,), generator=g))
                    m = int(torch.randint(1, 25, (1,), generator=g))
                    cases.append(case(seed, loss, n, m, replacement=replacement, candidates=candidates))
        # exact duplicates that straddle the ranks (7 rows repeated 4 times), with both exchange paths
        for replacement in (True, False):
            cases.append(case(11, loss, 7, 9, copies=4, replacement=replacement, fused=replacement))
        cases.append(case(12, loss, 7, 9, copies=4, candidates=9))
        # past the BLAS row-block grid: slices that start mid-block, subset and full squared paths
        cases.append(case(13, loss, 150 + world, 20, k=25))
        cases.append(case(14, loss, 150 + world, 20, k=25, candidates=40))
        cases.append(case(15, loss, 150 + world, 20, k=25, candidates=100))
        if loss != "squared":  # a tiny first batch: the ranks share their bounds at most steps
            cases.append(case(23, loss, 150 + world, 20, k=25, first_batch=2, replacement=False))
    # distinct rows that tie exactly: small integers make all the squared loss's arithmetic exact
    for replacement in (True, False):
        cases.append(case(16, "squared", 30, 3, integer=True, replacement=replacement))
    cases.append(case(17, "squared", 12, 6, c=2, k=20))  # outputs (N, m, C) with the squared loss
    cases[-1]["kw"]["shape3"] = True
    cases.append(case(18, "logistic", 25, 10, dtype=torch.float64))
    cases.append(case(19, "logistic", 25, 10, dtype=torch.float16))
    # a registered toy loss (tests/toy_loss.py) runs on its brute-force scorer: slices score as the whole
    for replacement in (True, False):
        for candidates in (None, 5):
            cases.append(case(24, "absolute", 30 + world, 7, k=12, replacement=replacement, candidates=candidates))
    if world == 2:  # uneven slices: a duplicate pair across the boundary, and rank 0 holding the end
        cases.append(case(20, "logistic", 7, 9, copies=4, split=[(0, 9), (9, 19)]))
        cases.append(case(21, "cross_entropy", 20, 8, split=[(13, 7), (0, 13)]))
    else:  # more ranks than rows: one rank holds nothing
        cases.append(case(20, "squared", 2, 5, k=4))
        cases.append(case(21, "logistic", 2, 5, k=2, replacement=False))
        cases.append(case(22, "cross_entropy", 20, 8, split=[(13, 7), (0, 5), (5, 8)]))
    return cases


def build(spec):
    kw = dict(spec["kw"])
    shape3 = kw.pop("shape3", False)
    if shape3:  # squared loss on (N, m, C) outputs
        g = torch.Generator().manual_seed(spec["seed"])
        c = kw.get("c", 2)
        return torch.randn(spec["n"], spec["m"], c, generator=g), torch.randn(spec["m"], c, generator=g)
    return problem(spec["seed"], spec["loss"], spec["n"], spec["m"], **kw)


def run_case(spec, **extra):
    phi, y = build(spec)
    if spec["split"] is not None:
        offset, length = spec["split"][D.rank()]
    else:
        offset, length = D.split_range(phi.shape[0], D.world_size(), D.rank())
    saved = S.FUSED_BYTES, S.FIRST_BATCH
    S.FUSED_BYTES = saved[0] if spec["fused"] else 0
    S.FIRST_BATCH = spec["first_batch"] or saved[1]
    try:
        return D.greedy_forward_selection(phi[offset:offset + length], y, spec["k"], offset=offset,
                                          loss=spec["loss"], replacement=spec["replacement"],
                                          candidates=spec["candidates"], seed=spec["seed"], **extra)
    finally:
        S.FUSED_BYTES, S.FIRST_BATCH = saved


def error_cases(world):
    """(name, per-rank call arguments as a function of the rank) - each must raise on every rank."""
    phi, y = problem(0, "squared", 12, 5)
    yl = (y > 0).float()

    def sliced(r, offsets=None):
        o, n = (offsets or [D.split_range(12, world, q) for q in range(world)])[r]
        return phi[o:o + n], o

    def args(r, **change):
        rows, offset = sliced(r)
        out = {"local_outputs": rows, "target": y, "k": 4, "offset": offset, "loss": "squared", "replacement": True}
        out.update(change)
        return out

    overlap = [(0, 7), (5, 7)] + [(12, 0)] * (world - 2)
    gap = [(0, 5), (6, 6)] + [(12, 0)] * (world - 2)
    bad_rows = phi.clone()
    bad_rows[-1, 2] = float("nan")
    return [
        ("k differs", lambda r: args(r, k=4 + r)),
        ("loss differs", lambda r: args(r, loss="logistic" if r else "squared", target=yl)),
        ("overlap", lambda r: args(r, local_outputs=sliced(r, overlap)[0], offset=overlap[r][0])),
        ("gap", lambda r: args(r, local_outputs=sliced(r, gap)[0], offset=gap[r][0])),
        ("k > N without replacement", lambda r: args(r, k=13, replacement=False)),
        ("NaN on the last rank", lambda r: args(r, local_outputs=bad_rows[slice(*_bounds(world, r))])),
        ("target differs", lambda r: args(r, target=y + r)),
        ("rows differ in m", lambda r: args(r, local_outputs=phi[slice(*_bounds(world, r)), :5 - r],
                                           target=y[:5 - r])),
        ("negative offset", lambda r: args(r, offset=-1 if r == world - 1 else sliced(r)[1])),
    ]


def _bounds(world, r):
    o, n = D.split_range(12, world, r)
    return o, o + n


def run_world(world):
    """Runs on every rank: all selection cases, then all error cases, then one more selection (the
    group must still be usable after the errors). Returns every rank's results (on rank 0)."""
    selections = []
    with registered():
        for spec in make_cases(world):
            result = run_case(spec)
            selections.append((result.indices, result.counts, result.losses, result.output, result.world_size))
    errors = {}
    for name, make in error_cases(world):
        try:
            D.greedy_forward_selection(**make(D.rank()))
            errors[name] = None
        except (ValueError, TypeError) as err:
            errors[name] = (type(err).__name__, str(err))
    after = run_case(case(30, "logistic", 20, 6)).indices
    out = [None] * world
    dist.all_gather_object(out, (selections, errors, after))
    return out


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def world(request):
    start = time.perf_counter()
    ranks = D.launch(run_world, request.param, request.param, threads=1, timeout_s=60)
    return request.param, ranks, time.perf_counter() - start


def test_same_selections_as_the_single_process_engine(world):
    size, ranks, _ = world
    selections = ranks[0][0]
    specs = make_cases(size)
    assert len(selections) == len(specs)
    for spec, (indices, counts, losses, output, world_size) in zip(specs, selections):
        phi, y = build(spec)
        with registered():
            ref = greedy_forward_selection(phi, y, spec["k"], loss=spec["loss"], replacement=spec["replacement"],
                                           candidates=spec["candidates"], seed=spec["seed"])
        label = {k: v for k, v in spec.items() if k != "kw"} | spec["kw"]
        assert indices.tolist() == ref.indices.tolist(), label
        assert counts.tolist() == ref.counts.tolist(), label
        torch.testing.assert_close(losses, ref.losses, rtol=1e-12, atol=0, msg=str(label))
        torch.testing.assert_close(output, ref.output, rtol=0, atol=0, msg=str(label))
        assert world_size == size


def test_every_rank_returns_the_same_result(world):
    size, ranks, _ = world
    assert len(ranks) == size
    for other in ranks[1:]:
        for mine, theirs in zip(ranks[0][0], other[0]):
            assert all(torch.equal(a, b) for a, b in zip(mine[:4], theirs[:4]))


def test_duplicates_straddling_ranks_go_to_the_lowest_global_index(world):
    size, ranks, _ = world
    for spec, (indices, *_rest) in zip(make_cases(size), ranks[0][0]):
        if spec["kw"].get("copies", 1) > 1 and spec["replacement"] and spec["candidates"] is None:
            assert max(indices.tolist()) < spec["n"], spec  # never a later copy of a row


EXPECTED_ERRORS = {
    "k differs": ("InvalidOptionError", "k must be the same on every rank, got rank 0: 4, rank 1: 5"),
    "loss differs": ("InvalidOptionError",
                     "loss must be the same on every rank, got rank 0: 'squared', rank 1: 'logistic'"),
    "overlap": ("InvalidOptionError",
                "must be contiguous and non-overlapping, covering 0 .. N-1; they overlap at row 5"),
    "gap": ("InvalidOptionError", "they leave a gap at row 5"),
    "k > N without replacement": ("InvalidOptionError", "k=13 exceeds the number of neurons N=12"),
    "target differs": ("InvalidOptionError", "target must be the same on every rank"),
    "rows differ in m": ("InvalidOptionError", "the outputs' row shape (m,) or (m, C) must be the same on every rank"),
}


def test_input_errors_are_raised_on_every_rank(world):
    size, ranks, _ = world
    last = size - 1
    for r, (_, errors, _) in enumerate(ranks):
        for name, (kind, text) in EXPECTED_ERRORS.items():
            assert errors[name] is not None and errors[name][0] == kind and text in errors[name][1], \
                (r, name, errors[name])
        # an invalid input on one rank: that rank gets the engine's own error, the others name the rank
        kind, text = errors["NaN on the last rank"]
        assert kind == "InvalidOptionError" and "NaN or inf" in text
        assert (f"rank {last}'s input is invalid" in text) == (r != last), (r, text)
        kind, text = errors["negative offset"]
        assert kind == "InvalidOptionError" and "offset must be >= 0" in text
        assert (f"rank {last}'s input is invalid" in text) == (r != last), (r, text)


def test_the_group_is_usable_after_input_errors(world):
    _, ranks, _ = world
    phi, y = problem(30, "logistic", 20, 6)
    expected = greedy_forward_selection(phi, y, 13, loss="logistic").indices.tolist()
    assert all(after.tolist() == expected for _, _, after in ranks)


# --- faults ---------------------------------------------------------------------------------------

def fail_mid_selection(victim, at_call, how, flag=None):
    """Every rank starts a selection; on ``victim`` the ``at_call``-th per-step all_gather dies (``os._exit``)
    or hangs until another rank has given up on it (``flag`` exists: that rank failed while this one was
    still hanging) and then raises. The others report how long they took to fail, and release it."""
    phi, y = problem(5, "logistic", 40, 30)
    offset, length = D.split_range(40, D.world_size(), D.rank())
    group = None
    if how == "hang":  # a short timeout only once every rank is up (starting them may take long on a busy machine)
        dist.barrier()
        group = dist.new_group(timeout=datetime.timedelta(seconds=4))
    if D.rank() == victim:
        calls = [0]
        real = dist.all_gather

        def flaky(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at_call:
                if how == "die":
                    os._exit(17)
                deadline = time.monotonic() + 300  # a bound on a broken test, not a timing assumption
                while not os.path.exists(flag) and time.monotonic() < deadline:
                    time.sleep(0.01)
                raise ValueError("hung on purpose" + ("" if os.path.exists(flag) else ", and nobody gave up on me"))
            return real(*args, **kwargs)

        dist.all_gather = flaky
    start = time.perf_counter()
    try:
        D.greedy_forward_selection(phi[offset:offset + length], y, 30, offset=offset, loss="logistic",
                                   process_group=group)
    except D.DistributedSelectionError as err:
        if flag is not None:
            open(flag, "w").close()
        return time.perf_counter() - start, str(err)
    return None


def test_a_rank_that_dies_mid_selection_makes_the_others_fail_quickly():
    with pytest.raises(D.WorkerError) as info:
        D.launch(fail_mid_selection, 2, 1, 5, "die", threads=1, timeout_s=120)
    err = info.value
    assert set(err.failures) == {1} and "exit code 17" in err.failures[1]
    _, message = err.results[0]
    assert "rank 0 of 2" in message and "at step 5 of 30" in message
    # quickly: the closed connection, not the (long) timeout, ended rank 0's wait (gloo says "closed" or
    # "reset by peer", depending on which side notices first)
    text = message.lower()
    assert "timed out" not in text and ("closed" in text or "reset by peer" in text), message


def test_a_rank_that_hangs_makes_the_others_fail_within_the_timeout(tmp_path):
    flag = str(tmp_path / "rank 0 gave up")
    with pytest.raises(D.WorkerError) as info:
        D.launch(fail_mid_selection, 2, 1, 3, "hang", flag, threads=1, timeout_s=120)
    err = info.value
    assert set(err.failures) == {1}
    # rank 1 was still hanging when rank 0 failed (rank 0 released it): rank 0 did not wait for it
    assert "raised:" in err.failures[1] and "ValueError: hung on purpose\n" in err.failures[1] + "\n"
    _, message = err.results[0]
    assert "at step 3 of 30" in message and "gathering the ranks' best candidates failed" in message
    assert "timed out" in message.lower()  # the bounded timeout fired; the connection was still open


def die_in_collective(where, victim):
    """Every rank runs a distributed selection (or ``prune_model(distributed=True)`` for "scores"); on
    ``victim`` the collective named by ``where`` exits the process when it is called. The other ranks
    return the error they raised."""
    from greedyprune.channels import prune_model
    from greedyprune.models import get_model

    name = {"inputs": "all_gather_object", "broadcast": "broadcast", "all_reduce": "all_reduce",
            "scores": "all_gather"}[where]
    if D.rank() == victim:
        real, calls = getattr(dist, name), [0]

        def dying(*args, **kwargs):
            calls[0] += 1
            owner = kwargs.get("src", D.rank()) == D.rank()  # a broadcast dies where it is the source
            if (where == "broadcast" and not owner) or (where == "scores" and calls[0] < 3):
                return real(*args, **kwargs)
            os._exit(17)

        setattr(dist, name, dying)
    S.FUSED_BYTES = 0 if where == "broadcast" else S.FUSED_BYTES  # the chosen row then travels by broadcast
    S.FIRST_BATCH = 2 if where == "all_reduce" else S.FIRST_BATCH  # the ranks then share bounds
    try:
        if where == "scores":
            g = torch.Generator().manual_seed(0)
            X, y = torch.randn(32, 1, 12, 12, generator=g), torch.randint(0, 10, (32,), generator=g)
            prune_model(get_model("resnet8", in_channels=1, width=4, seed=0), (X, y), objective="network",
                        keep_ratio=0.5, candidates=4, batch_size=16, distributed=True)
        else:
            phi, y = problem(6, "logistic", 150, 20)
            offset, length = D.split_range(150, D.world_size(), D.rank())
            D.greedy_forward_selection(phi[offset:offset + length], y, 25, offset=offset, loss="logistic",
                                       replacement=False)
    except D.DistributedSelectionError as err:
        return str(err)
    return "finished without an error"


@pytest.mark.parametrize("where, victim, text", [
    ("inputs", 1, "exchanging the inputs' description failed"),
    ("broadcast", 0, "broadcasting the chosen neuron's output failed"),
    ("all_reduce", 1, "sharing the best score so far failed"),
    ("scores", 1, "gathering the candidates' scores failed"),
])
def test_a_rank_dying_in_any_collective_fails_the_others_with_the_reason(where, victim, text):
    with pytest.raises(D.WorkerError) as info:
        D.launch(die_in_collective, 2, where, victim, threads=1, timeout_s=60)
    err = info.value
    survivor = 1 - victim
    assert set(err.failures) == {victim} and "exit code 17" in err.failures[victim]
    message = err.results[survivor]
    assert f"rank {survivor}" in message and text in message, message


# --- helpers, without starting processes ----------------------------------------------------------

def test_split_range_tiles_the_rows_in_balanced_slices():
    assert [D.split_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert [D.split_range(2, 3, r) for r in range(3)] == [(0, 1), (1, 1), (2, 0)]
    for n in range(30):
        for world in range(1, 6):
            parts = [D.split_range(n, world, r) for r in range(world)]
            assert sum(length for _, length in parts) == n
            assert all(parts[r][0] + parts[r][1] == parts[r + 1][0] for r in range(world - 1))
            assert max(p[1] for p in parts) - min(p[1] for p in parts) <= 1
    with pytest.raises(ValueError, match="must be < world"):
        D.split_range(10, 2, 2)
    with pytest.raises(ValueError, match="world must be >= 1"):
        D.split_range(10, 0, 0)


def test_helpers_without_a_process_group():
    assert not dist.is_initialized()
    assert (D.rank(), D.world_size(), D.is_main()) == (0, 1, True)
    phi, y = problem(0, "squared", 5, 4)
    with pytest.raises(RuntimeError, match="not initialised"):
        D.greedy_forward_selection(phi, y, 2, offset=0)


def test_init_process_group_needs_a_rank_and_world_size(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        D.init_process_group("gloo")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="MASTER_ADDR and MASTER_PORT"):
        D.init_process_group("gloo")


def test_torchrun_style_env_init_with_one_rank(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        monkeypatch.setenv(name, value)
    assert D.init_process_group(timeout_s=30) == "gloo"
    try:
        assert (D.rank(), D.world_size(), D.is_main()) == (0, 1, True)
        phi, y = problem(3, "cross_entropy", 30, 7)
        got = D.greedy_forward_selection(phi, y, 12, offset=0, loss="cross_entropy", progress=True)
        ref = greedy_forward_selection(phi, y, 12, loss="cross_entropy")
        assert got.indices.tolist() == ref.indices.tolist()
        assert D.init_process_group() == "gloo"  # already initialised: nothing to do
    finally:
        dist.destroy_process_group()


@pytest.mark.xfail(strict=False, reason="bitwise: which rows a BLAS matrix-vector kernel rounds alike depends on the "
                   "CPU's kernel; on this machine's (AVX-512 class) one case in 60 differs in the last bit. "
                   "Pre-existing; the distributed selections below are still compared exactly")
def test_slice_products_round_like_the_full_product():
    # BLAS matrix-vector kernels round a row differently depending on its place in the matrix
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = int(torch.randint(2, 400, (1,), generator=g))
        m = int(torch.randint(1, 200, (1,), generator=g))
        a = torch.randn(n, m, generator=g, dtype=torch.float64 if trial % 5 == 0 else torch.float32)
        x = torch.randn(m, generator=g, dtype=a.dtype)
        full = a @ x
        start = int(torch.randint(0, n, (1,), generator=g))
        length = int(torch.randint(1, n - start + 1, (1,), generator=g)) if trial % 3 else n - start
        rows = a[start:start + length].clone()
        assert torch.equal(Placement().matvec(rows, x, start, n), full[start:start + length]), (n, m, start, length)


@pytest.mark.parametrize("loss", ["logistic", "cross_entropy"])
def test_subset_scores_on_a_slice_are_bitwise_the_engines(loss):
    # SIMD passes round a buffer's last elements differently: a slice rebuilds the engine's chunks
    engine_cls = LogisticScorer if loss == "logistic" else CrossEntropyScorer
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        n = int(torch.randint(20, 300, (1,), generator=g))
        phi, y = problem(int(torch.randint(0, 1000, (1,), generator=g)), loss, n,
                         int(torch.randint(1, 50, (1,), generator=g)))
        chunk = int(torch.randint(1, 3000, (1,), generator=g))
        engine = engine_cls(phi, y, chunk)
        for i in torch.randint(0, n, (3,), generator=g).tolist():
            engine.add(phi[i], i)
        total = int(torch.randint(1, n + 1, (1,), generator=g))
        rows = torch.randperm(n, generator=g)[:total].sort().values
        full = engine.scores(rows, 3)
        offset = int(torch.randint(0, n, (1,), generator=g))
        length = int(torch.randint(1, n - offset + 1, (1,), generator=g))
        local = engine_cls(phi[offset:offset + length].clone(), y, chunk, Placement(offset, n))
        local.s = engine.s.clone()
        lo, hi = int(torch.searchsorted(rows, offset)), int(torch.searchsorted(rows, offset + length))
        assert torch.equal(local.scores(rows[lo:hi] - offset, 3, position=(lo, total)), full[lo:hi])


def test_row_digests_agree_for_equal_rows():
    phi = torch.randn(50, 13)
    phi[7] = phi[31]
    digests = S.row_digests(phi)
    assert digests[7] == digests[31]
    assert len(set(digests)) == 49
    assert S.row_digests(phi.double())[7] == S.row_digests(phi.double())[31]


def test_launch_needs_a_positive_number_of_workers():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        D.launch(math.sqrt, 0)
