"""Sluice transforms in Python.

A transform is a module (``transform.py``) that defines::

    import sluice

    def init(config):              # optional: the pipeline's config, parsed
        ...

    def process(record, out):      # every record of every batch
        doc = record.json()        # fails the record (invalid-input) if not JSON
        out.json({"id": doc["id"]})  # keeps the input's key, headers, timestamp

or, for authors who want the whole batch at once::

    def process_batch(records, out):
        for r in records:
            out[r].emit(r.value)

Outcomes: emitting one or more outputs emits them; emitting nothing drops
the record; raising ``sluice.Fail(kind, message)`` (or any exception) fails
the record -- it goes to the dead-letter queue with that kind and message,
and whatever it had emitted is discarded. An exception other than ``Fail``
fails with kind ``internal`` and names the exception and the line.

The host's columnar batch layout (one byte arena, spans, running totals,
sentinels) never shows: records are plain objects and outputs are calls.
``sluice build`` puts this package on the path; it matches the host that
built it.
"""

import io as _io
import json as _json

try:  # inside the component; absent when the SDK is imported for its tests
    from wit_world.imports import host as _host
except ImportError:  # pragma: no cover
    _host = None

__all__ = [
    "Fail",
    "Record",
    "Out",
    "KEEP",
    "config",
    "lookup",
    "lookup_text",
    "log",
    "JsonPath",
    "JsonPathError",
    "get",
]

ABSENT = 0xFFFFFFFF
NO_TIMESTAMP = -(1 << 63)

#: The parsed configuration of this transform (``{}`` when none).
config = {}


class _Keep:
    def __repr__(self):
        return "KEEP"


#: Default of ``emit``'s ``key``, ``headers`` and ``timestamp``: keep the
#: input record's.
KEEP = _Keep()


class Fail(Exception):
    """Fails the record: ``raise sluice.Fail("invalid-input", "why")``.

    Conventional kinds: ``invalid-input`` (the record is malformed),
    ``missing-field``, ``lookup-failed``, ``config``, ``internal``.
    """

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = str(kind)
        self.message = str(message)

    @staticmethod
    def invalid_input(message):
        return Fail("invalid-input", message)

    @staticmethod
    def missing_field(field):
        return Fail("missing-field", "field `%s` is missing" % field)

    @staticmethod
    def lookup_failed(message):
        return Fail("lookup-failed", message)

    @staticmethod
    def internal(message):
        return Fail("internal", message)


class Record:
    """One input record. ``key`` and ``value`` are ``bytes`` or ``None``;
    ``headers`` is a list of ``(name, bytes)``; ``timestamp`` is ms since the
    epoch or ``None``; ``stream``, ``partition``, ``offset`` say where it came
    from."""

    __slots__ = ("index", "key", "value", "headers", "timestamp", "stream", "partition", "offset")

    def __init__(self, index, key, value, headers, timestamp, stream, partition, offset):
        self.index = index
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp
        self.stream = stream
        self.partition = partition
        self.offset = offset

    def text(self):
        """The value as text; fails the record (``invalid-input``) if it is
        absent or not UTF-8."""
        if self.value is None:
            raise Fail("invalid-input", "record has no value")
        try:
            return self.value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Fail("invalid-input", "record value is not UTF-8: %s" % e) from None

    def json(self):
        """The value parsed as JSON; fails the record (``invalid-input``)
        if it is absent or not valid JSON."""
        if self.value is None:
            raise Fail("invalid-input", "record has no value")
        try:
            return _json.loads(self.value)
        except ValueError as e:
            raise Fail("invalid-input", "record value is not valid JSON: %s" % e) from None

    def header(self, name):
        """The value (``bytes``) of the first header called ``name``, or ``None``."""
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def __repr__(self):
        return "Record(index=%d, key=%r, value=%r)" % (self.index, self.key, self.value)


def _bytes(value, what):
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError("%s must be bytes, str or None, not %s" % (what, type(value).__name__))


class Out:
    """The outputs of one input record."""

    __slots__ = ("_record", "_outputs", "_fail", "_touched")

    def __init__(self, record):
        self._record = record
        self._outputs = []
        self._fail = None
        self._touched = False

    def emit(self, value, *, key=KEEP, headers=KEEP, timestamp=KEEP, to=None):
        """Emits an output record with ``value`` (bytes, str or None).

        ``key``, ``headers`` (a dict or a list of pairs) and ``timestamp``
        (ms) default to the input record's; pass ``key=None`` or
        ``headers=[]`` to emit without them. ``to`` names an output (e.g.
        ``"alerts"``) instead of the default one."""
        self._touched = True
        rec = self._record
        k = rec.key if key is KEEP else _bytes(key, "key")
        if headers is KEEP:
            hs = rec.headers
        else:
            items = headers.items() if isinstance(headers, dict) else headers
            hs = [(str(n), _bytes(v, "header `%s`" % n) or b"") for n, v in items]
        ts = NO_TIMESTAMP if timestamp is KEEP or timestamp is None else int(timestamp)
        self._outputs.append((to, k, _bytes(value, "value"), hs, ts))

    def json(self, value, *, key=KEEP, headers=KEEP, timestamp=KEEP, to=None):
        """Emits ``value`` serialized as JSON, keeping the input's key,
        headers and timestamp unless given."""
        try:
            text = _json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise Fail("internal", "cannot serialize output as JSON: %s" % e) from None
        self.emit(text, key=key, headers=headers, timestamp=timestamp, to=to)

    def drop(self):
        """Drops the record on purpose (also what emitting nothing does)."""
        self._touched = True
        self._outputs = []

    def fail(self, kind, message):
        """Fails the record, discarding what it emitted."""
        self._touched = True
        self._fail = (str(kind), str(message))

    @property
    def count(self):
        """Outputs emitted so far for this record."""
        return len(self._outputs)


class BatchOut:
    """The outputs of a whole batch: ``out[record]`` (or ``out[i]``) is that
    record's :class:`Out`."""

    def __init__(self, records):
        self._outs = [Out(r) for r in records]

    def __getitem__(self, record):
        i = record if isinstance(record, int) else record.index
        return self._outs[i]

    def __len__(self):
        return len(self._outs)


class _Log:
    """``sluice.log.info("...")``; lines are attributed to this transform
    and rate-limited by the host."""

    def __call__(self, level, message):
        levels = {
            "trace": _host.Level.TRACE,
            "debug": _host.Level.DEBUG,
            "info": _host.Level.INFO,
            "warn": _host.Level.WARN,
            "error": _host.Level.ERROR,
        }
        _host.log(levels.get(level, _host.Level.INFO), str(message))

    def trace(self, message):
        self("trace", message)

    def debug(self, message):
        self("debug", message)

    def info(self, message):
        self("info", message)

    def warn(self, message):
        self("warn", message)

    def error(self, message):
        self("error", message)


log = _Log()


class _Lines(_io.TextIOBase):
    """``sys.stdout`` and ``sys.stderr`` inside the component: each line
    written (``print()``, a traceback) becomes a line of this transform's
    log at the host, at ``info`` (stdout) or ``warn`` (stderr) -- the same
    bounded, rate-limited path as ``sluice.log``. The component has no
    console of its own: without this, ``print()`` trapped in the WASI stub
    and failed its record."""

    LIMIT = 4096  # characters held before a line without an end is sent

    def __init__(self, level, sink=None):
        super().__init__()
        self._level = level
        self._sink = sink
        self._held = []
        self._size = 0

    def writable(self):
        return True

    def isatty(self):
        return False

    @property
    def encoding(self):
        return "utf-8"

    def _send(self, line):
        if self._sink is not None:
            self._sink(self._level, line)
        elif _host is not None:
            log(self._level, line)

    def write(self, text):
        text = str(text)
        parts = text.split("\n")
        for part in parts[:-1]:
            self._held.append(part)
            self._send("".join(self._held))
            self._held = []
            self._size = 0
        last = parts[-1]
        if last:
            self._held.append(last)
            self._size += len(last)
            if self._size >= self.LIMIT:
                self.flush()
        return len(text)

    def flush(self):
        if self._held:
            line = "".join(self._held)
            self._held = []
            self._size = 0
            self._send(line)


def lookup_text(table, key):
    """The row of reference table ``table`` for ``key`` as JSON text, or ``None``."""
    return _host.lookup(str(table), str(key))


def lookup(table, key):
    """The row of reference table ``table`` for ``key`` as a dict, or ``None``."""
    text = lookup_text(table, key)
    return None if text is None else _json.loads(text)


class JsonPathError(ValueError):
    pass


class JsonPath:
    """A compiled JSONPath expression (RFC 9535 without filters and
    functions): ``$``, ``.name``, ``['name']``, ``[0]``, ``[-1]``, ``[*]``,
    ``.*``, ``[1:3]``, ``[a,b]`` and descendants ``..name``. A path may also
    be written without ``$`` (``a.b[0]``)."""

    def __init__(self, expr):
        self.expr = expr
        self._steps = _parse_path(expr)

    def query(self, doc):
        """Every node the path selects, in document order."""
        nodes = [doc]
        for descend, selectors in self._steps:
            if descend:
                nodes = [d for n in nodes for d in _descendants(n)]
            nodes = [m for n in nodes for s in selectors for m in _select(n, s)]
        return nodes

    def first(self, doc, default=None):
        nodes = self.query(doc)
        return nodes[0] if nodes else default

    def __repr__(self):
        return "JsonPath(%r)" % self.expr


_compiled = {}


def get(doc, path, default=None):
    """The first node ``path`` (JSONPath, or ``a.b[0]``) selects in ``doc``,
    or ``default``."""
    p = _compiled.get(path)
    if p is None:
        p = _compiled[path] = JsonPath(path)
    return p.first(doc, default)


def _descendants(node):
    out = [node]
    i = 0
    while i < len(out):
        n = out[i]
        if isinstance(n, dict):
            out.extend(n.values())
        elif isinstance(n, list):
            out.extend(n)
        i += 1
    return out


def _select(node, sel):
    kind, a = sel[0], sel[1:]
    if kind == "name":
        if isinstance(node, dict) and a[0] in node:
            return [node[a[0]]]
        return []
    if kind == "wild":
        if isinstance(node, dict):
            return list(node.values())
        if isinstance(node, list):
            return list(node)
        return []
    if not isinstance(node, list):
        return []
    if kind == "index":
        i = a[0]
        if i < 0:
            i += len(node)
        return [node[i]] if 0 <= i < len(node) else []
    start, end, step = a
    if step == 0:
        return []
    return node[slice(start, end, step)]


def _parse_path(expr):
    if not isinstance(expr, str):
        raise JsonPathError("`%r` is not valid JSONPath: not a string" % (expr,))

    def bad(why):
        return JsonPathError("`%s` is not valid JSONPath: %s" % (expr, why))

    s = expr
    i = 0
    n = len(s)
    steps = []
    if s.startswith("$"):
        i = 1
    elif s and (s[0].isalpha() or s[0] == "_"):
        s = "$." + s
        n = len(s)
        i = 1
    else:
        raise bad("it must start with `$`")

    def name_at(j):
        k = j
        while k < n and (s[k].isalnum() or s[k] in "_-" or ord(s[k]) > 127):
            k += 1
        return k

    while i < n:
        c = s[i]
        descend = False
        if c == ".":
            if s.startswith("..", i):
                descend = True
                i += 2
            else:
                i += 1
            if i < n and s[i] == "*":
                steps.append((descend, [("wild",)]))
                i += 1
                continue
            if i < n and s[i] == "[" and descend:
                c = "["
            else:
                k = name_at(i)
                if k == i:
                    raise bad("a name must follow `.` at position %d" % i)
                steps.append((descend, [("name", s[i:k])]))
                i = k
                continue
        if c == "[":
            i += 1
            selectors = []
            while True:
                while i < n and s[i] == " ":
                    i += 1
                if i >= n:
                    raise bad("unclosed `[`")
                ch = s[i]
                if ch == "?":
                    raise bad("filter expressions are not supported in this SDK")
                if ch in "'\"":
                    k = i + 1
                    buf = []
                    while k < n and s[k] != ch:
                        if s[k] == "\\" and k + 1 < n:
                            k += 1
                        buf.append(s[k])
                        k += 1
                    if k >= n:
                        raise bad("unclosed string")
                    selectors.append(("name", "".join(buf)))
                    i = k + 1
                elif ch == "*":
                    selectors.append(("wild",))
                    i += 1
                else:
                    k = i
                    while k < n and (s[k].isdigit() or s[k] in "-:"):
                        k += 1
                    part = s[i:k]
                    if not part:
                        raise bad("unexpected `%s` at position %d" % (ch, i))
                    try:
                        if ":" in part:
                            bits = part.split(":")
                            if len(bits) > 3:
                                raise ValueError
                            vals = [int(b) if b else None for b in bits] + [None] * (3 - len(bits))
                            selectors.append(("slice", vals[0], vals[1], 1 if vals[2] is None else vals[2]))
                        else:
                            selectors.append(("index", int(part)))
                    except ValueError:
                        raise bad("`%s` is not an index or a slice" % part) from None
                    i = k
                while i < n and s[i] == " ":
                    i += 1
                if i < n and s[i] == ",":
                    i += 1
                    continue
                if i < n and s[i] == "]":
                    i += 1
                    break
                raise bad("expected `]` at position %d" % i)
            steps.append((descend, selectors))
            continue
        raise bad("unexpected `%s` at position %d" % (c, i))
    return steps
