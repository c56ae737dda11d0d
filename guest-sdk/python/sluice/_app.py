"""The component's entry point: adapts the `sluice:transform` world to the
author's ``transform`` module. Not part of the API."""

import json
import sys
import traceback

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

import sluice
from sluice import ABSENT, NO_TIMESTAMP, BatchOut, Fail, Out, Record

# print() and anything written to stderr go to the transform's log at the
# host (set before the author's module is imported, so its import-time
# prints are logged too, when the component is built).
sys.stdout = sluice._Lines("info")
sys.stderr = sluice._Lines("warn")

# Imported when the component is built (componentize-py snapshots the
# interpreter after this module's import), never at run time: the
# component has no file system to import from.
import transform as _user


def _where(exc):
    """`transform.py line 12` for the innermost frame of the author's code."""
    # walk_tb, not extract_tb: the latter reads source lines from files,
    # and the component has no file system.
    frames = list(traceback.walk_tb(exc.__traceback__))
    for frame, lineno in reversed(frames):
        path = frame.f_code.co_filename.replace("\\", "/")
        if "/sluice/" not in path:
            return " (%s line %d)" % (path.rsplit("/", 1)[-1], lineno)
    return ""


def _describe(exc):
    return "uncaught %s: %s%s" % (type(exc).__name__, exc, _where(exc))


def _decode(batch):
    arena = batch.arena
    spans = batch.spans
    ts = batch.timestamps
    hends = batch.header_ends
    hspans = batch.header_spans
    sources = batch.sources
    sidx = batch.source_index
    offsets = batch.offsets
    records = []
    h = 0
    for i in range(len(ts)):
        ks, kl, vs, vl = spans[4 * i : 4 * i + 4]
        key = None if kl == ABSENT else arena[ks : ks + kl]
        value = None if vl == ABSENT else arena[vs : vs + vl]
        end = hends[i]
        headers = []
        while h < end:
            ns, nl, hs, hl = hspans[4 * h : 4 * h + 4]
            headers.append((arena[ns : ns + nl].decode("utf-8", "replace"), arena[hs : hs + hl]))
            h += 1
        t = ts[i]
        src = sources[sidx[i]] if sidx[i] < len(sources) else None
        off = offsets[i]
        records.append(
            Record(
                i,
                key,
                value,
                headers,
                None if t == NO_TIMESTAMP else t,
                src.stream if src else None,
                src.partition if src else None,
                None if off < 0 else off,
            )
        )
    return records


def _encode(outs):
    kinds = []
    output_ends = []
    failures = []
    names = {"": 0}
    name_list = [""]
    arena = bytearray()
    spans = []
    timestamps = []
    header_ends = []
    header_spans = []
    output_index = []
    emitted = 0
    headers = 0
    EMIT, DROP, FAIL = types.OutcomeKind.EMIT, types.OutcomeKind.DROP, types.OutcomeKind.FAIL
    for o in outs:
        if o._fail is not None:
            kinds.append(FAIL)
            failures.append(types.Failure(o._fail[0], o._fail[1]))
            output_ends.append(emitted)
            continue
        if not o._outputs:
            kinds.append(DROP)
            output_ends.append(emitted)
            continue
        kinds.append(EMIT)
        for to, key, value, hs, ts in o._outputs:
            if to:
                slot = names.get(to)
                if slot is None:
                    slot = names[to] = len(name_list)
                    name_list.append(to)
            else:
                slot = 0
            if key is None:
                spans.extend((0, ABSENT))
            else:
                spans.extend((len(arena), len(key)))
                arena += key
            if value is None:
                spans.extend((0, ABSENT))
            else:
                spans.extend((len(arena), len(value)))
                arena += value
            for n, v in hs:
                nb = n.encode("utf-8")
                header_spans.extend((len(arena), len(nb)))
                arena += nb
                header_spans.extend((len(arena), len(v)))
                arena += v
                headers += 1
            header_ends.append(headers)
            timestamps.append(ts)
            output_index.append(slot)
            emitted += 1
        output_ends.append(emitted)
    return types.Outcomes(
        kinds,
        output_ends,
        failures,
        name_list,
        bytes(arena),
        spans,
        timestamps,
        header_ends,
        header_spans,
        output_index,
    )


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        user = _user
        try:
            parsed = json.loads(config) if config else {}
        except ValueError as e:
            raise Err("configuration is not valid JSON: %s" % e)
        sluice.config = parsed
        if not hasattr(user, "process") and not hasattr(user, "process_batch"):
            raise Err("transform.py defines neither `process(record, out)` nor `process_batch(records, out)`")
        init = getattr(user, "init", None)
        if init is None:
            return
        try:
            init(parsed)
        except Fail as e:
            raise Err(e.message)
        except Exception as e:
            raise Err(_describe(e))

    def process(self, batch: types.Batch) -> types.Outcomes:
        try:
            return self._process(batch)
        finally:
            # A line without its end is sent at the end of the batch.
            sys.stdout.flush()
            sys.stderr.flush()

    def _process(self, batch: types.Batch) -> types.Outcomes:
        user = _user
        records = _decode(batch)
        whole = getattr(user, "process_batch", None)
        if whole is not None:
            out = BatchOut(records)
            try:
                whole(records, out)
            except Exception as e:
                # The whole batch fails; the host isolates the records at fault.
                raise Err(_describe(e))
            return _encode(out._outs)
        process = user.process
        outs = []
        for r in records:
            o = Out(r)
            try:
                process(r, o)
            except Fail as e:
                o._fail = (e.kind, e.message)
            except Exception as e:
                o._fail = ("internal", _describe(e))
            if o._fail is not None:
                o._outputs = []
            outs.append(o)
        return _encode(outs)

