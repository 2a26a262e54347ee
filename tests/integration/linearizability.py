# SPDX-License-Identifier: Apache-2.0
"""Linearizability checker for histories of etcd v2 operations on single keys (pure: no I/O).

The model is a register per key whose state is its value, or None while the key does not exist:
  write  PUT value=v                 always succeeds: state := v
  cas    PUT prevValue=a value=b     result "ok": needs state == a, state := b
                                     result "mismatch" (errorCode 101): needs state exists and != a
                                     result "absent" (errorCode 100): needs state is None
  read   GET ?quorum=true            result v: needs state == v; result None (404): needs state is None

Every operation has an invoke and a complete time (time.monotonic()). An operation whose outcome the
client could not learn (timeout, reset, 5xx, errorCode 300, the member died) is INDETERMINATE: it may have
taken effect at any point after its invoke, or never. The standard treatment (Knossos, Porcupine) is used:
its completion is +infinity, so it can always be linearized after every definite operation, which is the
same as never; an indeterminate read observed nothing and is dropped; an indeterminate cas, when
linearized, succeeds if state == a and otherwise leaves the state alone (it may have failed).

The search is Wing & Gong's, as improved by Lowe ("Testing for linearizability", 2016): the history is a
doubly linked list of call and return entries in time order; only calls before the first pending return
may be linearized next ("just-in-time" linearization); each (set of linearized operations, state) pair
is tried once (the cache). Histories are checked per key, which is sound because keys are independent
registers (linearizability is compositional). The search is bounded (states and seconds) and reports
"unknown" instead of running away.

On failure it returns a counterexample: the end of the longest linearization found, the operation that
could not be linearized after it, and the operations concurrent with that one, with the state each needs.
"""

import time
from collections import defaultdict

# Operation statuses.
OK = "ok"          # definite outcome (the reply was read)
INFO = "info"      # indeterminate
FAIL = "fail"      # definitely without effect and observing nothing (e.g. a 4xx not about the value)

_INF = float("inf")


class Op:
    """One client operation on one key. kind is "write", "cas" or "read"; value is the written value
    (write, cas), prev the cas prevValue; result: for a read the value read (None = not found), for a cas
    "ok"/"mismatch"/"absent"; status OK, INFO or FAIL."""

    __slots__ = ("key", "kind", "value", "prev", "result", "status", "invoke", "complete", "client",
                 "member", "note", "id")

    def __init__(self, key, kind, invoke, complete=None, status=OK, value=None, prev=None, result=None,
                 client=None, member=None, note=None):
        assert kind in ("write", "cas", "read"), kind
        assert status in (OK, INFO, FAIL), status
        if kind == "cas" and status == OK:
            assert result in ("ok", "mismatch", "absent"), result
        self.key = key
        self.kind = kind
        self.value = value
        self.prev = prev
        self.result = result
        self.status = status
        self.invoke = invoke
        self.complete = _INF if status == INFO or complete is None else complete
        self.client = client
        self.member = member
        self.note = note
        self.id = None

    FIELDS = ("key", "kind", "value", "prev", "result", "status", "invoke", "complete", "client", "member",
              "note")

    def to_dict(self):
        return {f: None if getattr(self, f) == _INF else getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_dict(cls, d):
        o = cls(d["key"], d["kind"], d["invoke"], d["complete"], status=d["status"], value=d["value"],
                prev=d["prev"], result=d["result"] if d["kind"] != "cas" or d["status"] == OK else None,
                client=d["client"], member=d["member"], note=d["note"])
        o.result = d["result"]
        return o

    def describe(self, t0=0.0):

        if self.kind == "write":
            what = f"write {short(self.value)}"
        elif self.kind == "cas":
            what = f"cas {short(self.prev)}->{short(self.value)}"
        else:
            what = "read"
        if self.status == INFO:
            out = "INDETERMINATE" + (f" ({self.note})" if self.note else "")
        elif self.status == FAIL:
            out = "failed" + (f" ({self.note})" if self.note else "")
        elif self.kind == "read":
            out = "-> not found" if self.result is None else f"-> {short(self.result)}"
        elif self.kind == "cas":
            out = {"ok": "-> ok", "mismatch": "-> 101 compare failed", "absent": "-> 100 not found"}[self.result]
        else:
            out = "-> ok"
        end = "inf" if self.complete == _INF else f"{self.complete - t0:9.3f}"
        who = ""
        if self.client is not None or self.member is not None:
            who = f" [client {self.client} via {self.member}]"
        return f"[{self.invoke - t0:9.3f} .. {end}] {what} {out}{who}"

    def __repr__(self):
        return f"<Op {self.describe()}>"


def short(v):
    """A value for a human: the nemesis test pads its values, and their unique head is what matters."""
    return repr(v) if v is None or len(v) <= 24 else repr(v[:16] + "...")


def step(op, state):
    """(legal, new state) of applying op in state."""
    if op.kind == "write":
        return True, op.value
    if op.kind == "read":
        return op.result == state, state
    # cas
    if op.status == INFO:
        return True, op.value if state == op.prev else state
    if op.result == "ok":
        return state == op.prev, op.value
    if op.result == "mismatch":
        return state is not None and state != op.prev, state
    return state is None, state


def _need(op):
    """What state op needs, for the counterexample."""
    if op.kind == "read":
        return "needs key absent" if op.result is None else f"needs state {short(op.result)}"
    if op.kind == "cas" and op.status == OK:
        return {"ok": f"needs state {short(op.prev)}",
                "mismatch": f"needs key present and != {short(op.prev)}",
                "absent": "needs key absent"}[op.result]
    return "always applicable"


class Result:
    def __init__(self, key, verdict, ops, explored, seconds, report=""):
        self.key = key
        self.verdict = verdict      # "ok", "fail" or "unknown"
        self.ops = ops              # operations searched (after dropping indeterminate reads, failures)
        self.explored = explored    # search steps (cache insertions)
        self.seconds = seconds
        self.report = report        # counterexample (fail) or reason (unknown)

    @property
    def ok(self):
        return self.verdict == "ok"

    def __repr__(self):
        return f"<Result {self.key}: {self.verdict} ({len(self.ops)} ops, {self.explored} states, {self.seconds:.3f}s)>"


class _Entry:
    __slots__ = ("op", "call", "match", "prev", "next")

    def __init__(self, op, call):
        self.op = op
        self.call = call
        self.match = None
        self.prev = None
        self.next = None


def check_key(ops, key=None, init=None, max_states=2_000_000, max_seconds=60.0):
    """Checks the operations of one key from state init (None: key absent). Returns a Result."""
    t_start = time.monotonic()
    # An indeterminate read observed nothing; a failed operation did nothing: neither constrains.
    ops = [o for o in ops if o.status == OK or (o.status == INFO and o.kind != "read")]
    # Bit numbers: the definite operations first, in invoke order, then the indeterminate ones. The cache
    # key keeps the definite bits as (lowest unset bit, the bits above it): the search linearizes them
    # nearly in order, so that stays a few words however long the history, where the plain mask of a
    # 10-minute run would be kilobytes per cache entry.
    ops.sort(key=lambda o: (o.status != OK, o.invoke))
    for i, o in enumerate(ops):
        o.id = i
    n_def = sum(1 for o in ops if o.status == OK)
    def_bits = (1 << n_def) - 1

    def cache_key(lin, state):
        d = lin & def_bits
        w = (~d & (d + 1)).bit_length() - 1  # lowest unset bit
        return (w, d >> w, lin >> n_def, state)
    definite = sum(1 for o in ops if o.status == OK)

    # Event list: calls before returns at equal times, so that touching operations count as concurrent
    # (the lenient reading; the clocks are one process's monotonic clock anyway).
    events = []
    for o in ops:
        c, r = _Entry(o, True), _Entry(o, False)
        c.match = r
        events.append((o.invoke, 0, o.id, c))
        events.append((o.complete, 1, o.id, r))
    events.sort(key=lambda e: e[:3])
    head = _Entry(None, False)
    prev = head
    for _, _, _, e in events:
        prev.next = e
        e.prev = prev
        prev = e

    def lift(e):
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev
        m = e.match
        m.prev.next = m.next
        if m.next is not None:
            m.next.prev = m.prev

    def unlift(e):
        m = e.match
        m.prev.next = m
        if m.next is not None:
            m.next.prev = m
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e

    cache = set()
    stack = []  # (call entry, state before it)
    state = init
    linearized = 0
    remaining = definite
    entry = head.next
    best = (-1, None)  # (definite ops linearized, snapshot for the counterexample)
    steps = 0
    while remaining > 0:
        if entry is None:  # cannot happen: a definite return is always still in the list
            break
        if entry.call:
            op = entry.op
            legal, new = step(op, state)
            if legal:
                lin = linearized | (1 << op.id)
                k = cache_key(lin, new)
                if k not in cache:
                    cache.add(k)
                    steps += 1
                    if steps % 4096 == 0:
                        if steps >= max_states or time.monotonic() - t_start > max_seconds:
                            return Result(key, "unknown", ops, steps, time.monotonic() - t_start,
                                          f"search budget exhausted ({steps} states, "
                                          f"{time.monotonic() - t_start:.1f}s) with {len(ops)} ops")
                    stack.append((entry, state))
                    state = new
                    linearized = lin
                    if op.status == OK:
                        remaining -= 1
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # The earliest pending return: its op must be linearized before anything later; no way.
            depth = definite - remaining
            if depth > best[0]:
                # only the end of the linearization: copying all of it here would make the search
                # quadratic in the history's length
                tail = [(e.op, st) for e, st in stack[-_CONTEXT:]]
                best = (depth, (len(stack), tail, state, entry.op, _pending(head, entry)))
            if not stack:
                break
            e, state = stack.pop()
            linearized &= ~(1 << e.op.id)
            if e.op.status == OK:
                remaining += 1
            unlift(e)
            entry = e.next
    seconds = time.monotonic() - t_start
    if remaining == 0:
        return Result(key, "ok", ops, steps, seconds)
    return Result(key, "fail", ops, steps, seconds, _counterexample(key, init, ops, best[1]))


_CONTEXT = 8  # operations of the linearization shown before the one that cannot go


def _pending(head, stop):
    """The calls before the entry stop: the operations that could have been linearized there."""
    out = []
    e = head.next
    while e is not None and e is not stop:
        if e.call:
            out.append(e.op)
        e = e.next
    return out


def _counterexample(key, init, ops, snap, context=_CONTEXT):
    t0 = min((o.invoke for o in ops), default=0.0)
    if snap is None:  # the search never reached a return (cannot happen with a well-formed history)
        return f"key {key}: NOT linearizable ({len(ops)} ops), no counterexample recorded"
    n, tail, state, blocked, pending = snap
    lines = [f"key {key}: NOT linearizable ({len(ops)} ops; times in s from the first invoke)",
             f"longest linearization found: {n} ops, from {'absent' if init is None else short(init)}; "
             f"its last {len(tail)} (state after each):"]
    for o, before in tail:
        lines.append(f"    {o.describe(t0)}   => {short(step(o, before)[1])}")
    lines.append(f"state then: {'absent' if state is None else short(state)}")
    lines.append("this operation cannot be linearized next (and no other order of what came before lets it):")
    lines.append(f"    {blocked.describe(t0)}   {_need(blocked)}")
    others = [o for o in pending if o is not blocked]
    if others:
        lines.append("the other operations that could go before it, none of which leads to a linearization:")
        for o in sorted(others, key=lambda o: o.invoke)[:3 * context]:
            lines.append(f"    {o.describe(t0)}   {_need(o)}")
    # what a human needs around it: who wrote the value it needs, what completed just before it began,
    # and what ran at the same time
    wanted = blocked.result if blocked.kind == "read" else blocked.prev if blocked.kind == "cas" else None
    if wanted is not None:
        writers = [o for o in ops if o.kind in ("write", "cas") and o.value == wanted]
        lines.append(f"the operations that wrote {short(wanted)}:"
                     if writers else f"no operation wrote {short(wanted)}")
        for o in writers:
            lines.append(f"    {o.describe(t0)}")
    shown = set(map(id, others)) | {id(blocked)}
    before = sorted((o for o in ops if o.complete < blocked.invoke), key=lambda o: o.complete)[-context:]
    during = [o for o in ops if o.invoke <= blocked.complete and o.complete >= blocked.invoke]
    near = [o for o in before + during if id(o) not in shown]
    if near:
        lines.append("the operations that completed just before it began and those concurrent with it:")
        for o in sorted(set(near), key=lambda o: o.invoke)[:3 * context]:
            lines.append(f"    {o.describe(t0)}")
    return "\n".join(lines)


def check_history(ops, init=None, max_states=2_000_000, max_seconds=60.0):
    """Checks every key of a history independently: {key: Result}. init: {key: initial value}."""
    by_key = defaultdict(list)
    for o in ops:
        by_key[o.key].append(o)
    init = init or {}
    return {k: check_key(v, key=k, init=init.get(k), max_states=max_states, max_seconds=max_seconds)
            for k, v in sorted(by_key.items())}
