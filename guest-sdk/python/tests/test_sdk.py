"""Unit tests of the Python SDK outside a component (plain CPython):
`python3 -m unittest discover -s guest-sdk/python/tests` (scripts/test runs it)."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import sluice  # noqa: E402


class JsonPathTest(unittest.TestCase):
    DOC = {"a": {"b": [1, 2, {"c": 3}]}, "items": [{"id": 1}, {"id": 2}], "x y": 5}

    def q(self, path):
        return sluice.JsonPath(path).query(self.DOC)

    def test_selects_like_the_rust_and_javascript_sdks(self):
        self.assertEqual(self.q("$.a.b[0]"), [1])
        self.assertEqual(self.q("$.a.b[-1].c"), [3])
        self.assertEqual(self.q("$.items[*].id"), [1, 2])
        self.assertEqual(self.q("$..id"), [1, 2])
        self.assertEqual(self.q('$["x y"]'), [5])
        self.assertEqual(self.q("a.b[1:]"), [2, {"c": 3}])
        self.assertEqual(self.q("$.a.b[0,2]"), [1, {"c": 3}])
        self.assertEqual(self.q("$.a.b[::-1]"), [{"c": 3}, 2, 1])
        self.assertEqual(self.q("$.nope"), [])
        self.assertEqual(sluice.get(self.DOC, "a.b[1]"), 2)
        self.assertIsNone(sluice.get(self.DOC, "$.nope"))

    def test_invalid_paths_are_named(self):
        for bad in ["$[?", "$.", "x[", "$[a]", "1"]:
            with self.assertRaises(sluice.JsonPathError) as e:
                sluice.JsonPath(bad)
            self.assertIn("is not valid JSONPath", str(e.exception))
            self.assertIn(bad, str(e.exception))


def record(value, key=b"k", headers=None, timestamp=None):
    return sluice.Record(0, key, value, headers or [("h", b"v")], timestamp, "s", 0, 7)


class OutTest(unittest.TestCase):
    def test_emit_keeps_key_headers_and_timestamp_unless_given(self):
        out = sluice.Out(record(b"{}"))
        out.json({"a": 1})
        out.emit("x", key=None, headers={"n": "m"}, timestamp=5, to="alerts")
        self.assertEqual(out._outputs[0], (None, b"k", b'{"a":1}', [("h", b"v")], sluice.NO_TIMESTAMP))
        self.assertEqual(out._outputs[1], ("alerts", None, b"x", [("n", b"m")], 5))
        out.drop()
        self.assertEqual(out.count, 0)

    def test_record_helpers_fail_with_invalid_input(self):
        with self.assertRaises(sluice.Fail) as e:
            record(b"\xff").text()
        self.assertEqual(e.exception.kind, "invalid-input")
        with self.assertRaises(sluice.Fail) as e:
            record(b"{").json()
        self.assertIn("record value is not valid JSON", e.exception.message)
        with self.assertRaises(sluice.Fail):
            record(None).json()
        self.assertEqual(record(b"[1]").json(), [1])
        self.assertEqual(record(b"x").header("h"), b"v")
        self.assertIsNone(record(b"x").header("nope"))

    def test_values_must_be_bytes_or_text(self):
        out = sluice.Out(record(b"x"))
        with self.assertRaises(TypeError):
            out.emit(3)
        with self.assertRaises(sluice.Fail) as e:
            out.json({1, 2})
        self.assertEqual(e.exception.kind, "internal")


if __name__ == "__main__":
    unittest.main()


class PrintTest(unittest.TestCase):
    def test_print_sends_whole_lines_and_holds_a_bounded_rest(self):
        got = []
        out = sluice._Lines("info", lambda level, line: got.append((level, line)))
        print("hello", 42, file=out)
        print("a\nb", end="", file=out)
        self.assertEqual(got, [("info", "hello 42"), ("info", "a")])
        out.flush()
        self.assertEqual(got[-1], ("info", "b"))
        out.write("x" * (sluice._Lines.LIMIT + 10))
        self.assertEqual(len(got), 4, "a line over the limit is sent, not held")
        self.assertEqual(len(got[-1][1]), sluice._Lines.LIMIT + 10)
        out.flush()
        self.assertEqual(len(got), 4, "nothing held after")
        self.assertFalse(out.isatty())
