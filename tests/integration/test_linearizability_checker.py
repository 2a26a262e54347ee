# SPDX-License-Identifier: Apache-2.0
"""Unit tests of linearizability.py (no daemon): histories known to be linearizable pass, the classic
violations (stale read, lost write, double CAS, a value never written, time going backwards) fail with a
counterexample naming the offending operation, and a search too big for its budget says "unknown"."""

import time

from linearizability import FAIL, INFO, Op, check_history, check_key


def W(v, a, b, status="ok", key="k", client=None):
    return Op(key, "write", a, b, status=status, value=v, client=client)


def C(prev, v, a, b, result="ok", status="ok", key="k"):
    return Op(key, "cas", a, b, status=status, prev=prev, value=v, result=result)


def R(v, a, b, status="ok", key="k"):
    return Op(key, "read", a, b, status=status, result=v)


def ok(ops, **kw):
    r = check_key(ops, key="k", **kw)
    assert r.verdict == "ok", r.report
    return r


def bad(ops, blamed=None, **kw):
    r = check_key(ops, key="k", **kw)
    assert r.verdict == "fail", r
    assert "NOT linearizable" in r.report
    if blamed is not None:
        # the operation the report says cannot be linearized
        line = r.report.split("cannot be linearized next")[1].splitlines()[1]
        assert blamed in line, r.report
    return r


# -- linearizable -----------------------------------------------------------------------------------------
def test_empty_and_sequential():
    ok([])
    ok([R(None, 0, 1), W("a", 2, 3), R("a", 4, 5), C("a", "b", 6, 7), R("b", 8, 9),
        C("a", "c", 10, 11, result="mismatch"), R("b", 12, 13), W("d", 14, 15), R("d", 16, 17)])
    ok([C("x", "y", 0, 1, result="absent"), R(None, 2, 3)])
    ok([R("i", 0, 1)], init="i")


def test_concurrent_overlaps():
    # two overlapping writes; reads during and after may see either order, as long as they agree
    ok([W("a", 0, 10), W("b", 1, 9), R("a", 2, 3), R("b", 4, 5), R("b", 11, 12)])
    ok([W("a", 0, 10), W("b", 1, 9), R("b", 2, 3), R("a", 4, 5), R("a", 11, 12)])
    # a read overlapping a write may see the old or the new value
    ok([W("a", 0, 1), W("b", 2, 10), R("a", 3, 4), R("b", 5, 6), R("b", 11, 12)])
    # a cas overlapping a write: the cas linearizes before it
    ok([W("a", 0, 1), W("c", 2, 10), C("a", "b", 3, 8), R("c", 11, 12)])
    # one of two concurrent cas from the same value wins, the other sees the winner's value
    ok([W("a", 0, 1), C("a", "b", 2, 10), C("a", "c", 3, 9, result="mismatch"), R("b", 11, 12)])


def test_indeterminate_write_happened():
    # the write timed out, yet later reads see it: fine
    ok([W("a", 0, 1), W("b", 2, None, status=INFO), R("b", 10, 11), R("b", 12, 13)])
    # ... and it may even take effect long after its invoke (it sat in a queue)
    ok([W("a", 0, 1), W("b", 2, None, status=INFO), R("a", 10, 11), R("b", 12, 13)])


def test_indeterminate_write_did_not_happen():
    ok([W("a", 0, 1), W("b", 2, None, status=INFO), R("a", 10, 11), W("c", 12, 13), R("c", 14, 15)])
    # an indeterminate cas may have failed
    ok([W("a", 0, 1), C("a", "b", 2, None, status=INFO), R("a", 10, 11)])
    ok([W("a", 0, 1), C("a", "b", 2, None, status=INFO), R("b", 10, 11)])


def test_indeterminate_reads_and_failures_are_ignored():
    ok([W("a", 0, 1), R("zzz", 2, None, status=INFO), Op("k", "write", 3, 4, status=FAIL, value="q"),
        R("a", 5, 6)])


def test_history_per_key():
    rs = check_history([W("a", 0, 1, key="x"), R("a", 2, 3, key="x"), W("b", 0, 1, key="y"), R("b", 2, 3, key="y")])
    assert set(rs) == {"x", "y"} and all(r.ok for r in rs.values())
    # a value of another key is not visible here
    rs = check_history([W("a", 0, 1, key="x"), R("a", 2, 3, key="y")])
    assert rs["x"].ok and rs["y"].verdict == "fail"


# -- not linearizable -------------------------------------------------------------------------------------
def test_stale_read():
    # the write of b completed before the read began, which still returns a
    r = bad([W("a", 0, 1), W("b", 2, 3), R("a", 4, 5)], blamed="read -> 'a'")
    assert "write 'b'" in r.report


def test_lost_write():
    # b was acknowledged, no one else writes, yet every later read returns a
    bad([W("a", 0, 1), W("b", 2, 3), R("a", 10, 11), R("a", 12, 13), R("a", 14, 15)], blamed="read -> 'a'")


def test_lost_write_behind_indeterminate():
    # an indeterminate write may explain a read of its own value, never a read of a value overwritten
    # by a write (b) that completed before the read began
    bad([W("old", 0, 1), W("a", 2, None, status=INFO), W("b", 3, 4), R("old", 10, 11)], blamed="read -> 'old'")
    ok([W("old", 0, 1), W("a", 2, None, status=INFO), W("b", 3, 4), R("a", 10, 11)])


def test_double_cas():
    bad([W("a", 0, 1), C("a", "b", 2, 5), C("a", "c", 3, 6), R("c", 7, 8)])
    bad([W("a", 0, 1), C("a", "b", 2, 5), C("a", "c", 3, 6)])


def test_cas_mismatch_lie():
    # a cas says 101 though the value was its prevValue and no one else wrote
    bad([W("a", 0, 1), C("a", "b", 2, 3, result="mismatch")], blamed="101")
    # 100 (not found) on a key that exists
    bad([W("a", 0, 1), C("a", "b", 2, 3, result="absent")], blamed="100")


def test_read_of_value_never_written():
    bad([W("a", 0, 1), R("ghost", 2, 3)], blamed="ghost")
    bad([R("a", 0, 1)], blamed="read -> 'a'")  # key absent at the start


def test_read_back_in_time():
    # two concurrent writes; sequential reads see b then a: a must then follow b ... but a then b is read
    bad([W("a", 0, 10), W("b", 0, 10), R("b", 11, 12), R("a", 13, 14)])
    # two sequential reads during one write: new then old
    bad([W("a", 0, 1), W("b", 2, 20), R("b", 3, 4), R("a", 5, 6)], blamed="read -> 'a'")
    # a deleted-looking read (not found) after the key existed
    bad([W("a", 0, 1), R("a", 2, 3), R(None, 4, 5)])


def test_counterexample_is_readable():
    r = bad([W("a", 0, 1), W("b", 2, 3), R("a", 4, 5)])
    text = r.report
    assert "longest linearization found" in text and "=> 'b'" in text, text
    print(text)


# -- budget -----------------------------------------------------------------------------------------------
def test_budget_gives_unknown():
    # many overlapping indeterminate writes and cas make the search wide; with a tiny budget: unknown
    ops = [W("init", 0, 1)]
    for i in range(40):
        ops.append(W(f"w{i}", 2 + i * 0.01, None, status=INFO))
        ops.append(C(f"w{i - 1}", f"c{i}", 2 + i * 0.01, None, status=INFO))
    for i in range(20):
        ops.append(R("never", 100 + i, 100.5 + i))
    t = time.monotonic()
    r = check_key(ops, key="k", max_states=5000, max_seconds=5)
    assert r.verdict == "unknown", r
    assert time.monotonic() - t < 5
    assert "budget" in r.report


def test_big_linearizable_history_is_fast():
    # 3 clients x 400 sequential ops each, overlapping, values unique, with some indeterminate ones
    ops = []
    t = 0.0
    cur = "v0"
    ops.append(W(cur, -2, -1))
    for i in range(1200):
        c = i % 3
        if i % 50 == 7:
            ops.append(W(f"lost{i}", t, None, status=INFO))
        elif c == 0:
            ops.append(W(f"v{i}", t, t + 0.5, client=c))
            cur = f"v{i}"
        elif c == 1:
            ops.append(C(cur, f"v{i}", t, t + 0.5))
            cur = f"v{i}"
        else:
            ops.append(R(cur, t, t + 0.5))
        t += 0.4  # consecutive ops overlap by 0.1
    start = time.monotonic()
    r = check_key(ops, key="k")
    assert r.verdict == "ok", r.report
    assert time.monotonic() - start < 3, r


def test_saved_history_round_trip():
    ops = [W("a", 0, 1), C("a", "b", 2, None, status=INFO), R("b", 3, 4), C("x", "y", 5, 6, result="mismatch")]
    again = [Op.from_dict(o.to_dict()) for o in ops]
    assert [o.to_dict() for o in again] == [o.to_dict() for o in ops]
    assert check_key(again, key="k").verdict == "ok"
