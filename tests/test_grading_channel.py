"""The result pipe as a hostile student writes to it (tinyinterp.grading.protocol): every field of every
message is validated, tensors travel as safetensors whose declared dtypes and shapes are checked against
the case's budget before a byte of tensor data is read, floods and oversized output are `output_limit`,
anything the protocol cannot express is a ProtocolError (status `error`), and only plain dense tensors
can be sent at all. In process and fast: the child's side (`encode`, `to_wire`) builds the honest
messages, and forgeries are written byte by byte as a student's code could."""

import json
import struct

import pytest
import torch

from tinyinterp.grading import protocol as P
from tinyinterp.harness import get_exercise
from tinyinterp.harness.judge import judge
from tinyinterp.harness.runner import Outcome

PARAMS = ["tokens", "W_E", "W_pos"]
BUDGET = 1000  # tensor elements per case message


def conversation(max_bytes=0, cells=(1, 3), exercises=("embed",), testing="embed"):
    """A reader for one child; ``testing``: an exercise already started (its cases come next), or None."""
    wire = {"embed": P.ExerciseWire("embed", [PARAMS] * 3, [BUDGET] * 3),
            "other": P.ExerciseWire("other", [["x"]], [BUDGET])}
    talk = P.Channel(wire, n_cells=4, max_bytes=max_bytes).conversation(list(cells), list(exercises))
    if testing:
        talk.next(Pipe(frame({"event": "exercise_start", "id": testing})))
    return talk


class Pipe:
    """``read_exactly`` over bytes, like protocol.reader over a pipe; counts what was read."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def __call__(self, n):
        if self.pos >= len(self.data):
            return None
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        if len(chunk) < n:
            raise P.ProtocolError("truncated message")
        return chunk


def read_all(data: bytes, talk=None):
    talk = talk or conversation()
    pipe, out = Pipe(data), []
    while (m := talk.next(pipe)) is not None:
        out.append(m)
    return out


def case_msg(k=0, **changes):
    msg = dict(event="case", id="embed", case=k, output=torch.ones(2, 3), timed_out=False, error_type=None,
               traceback="", seconds=0.1, inputs_after={"tokens": torch.zeros(2, dtype=torch.long),
                                                        "W_E": torch.ones(3, 3), "W_pos": torch.ones(4, 3)})
    msg.update(changes)
    return msg


def frame(header, blob=b""):
    """A frame with any header a student cares to write (JSON as the child would encode it)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return P.FRAME.pack(P.MAGIC, len(raw), len(blob)) + raw + blob


def st_blob(entries, data=b""):
    """A safetensors blob with a hand-written header (``entries``: name -> dict)."""
    raw = json.dumps(entries).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def honest_header(k=0):
    """The JSON header of an honest case message: output t0, inputs t1..t3."""
    return {"event": "case", "id": "embed", "case": k, "timed_out": False, "error_type": None, "traceback": "",
            "seconds": 0.1, "output": {"$tensor": "t0"},
            "inputs_after": {"tokens": {"$tensor": "t1"}, "W_E": {"$tensor": "t2"}, "W_pos": {"$tensor": "t3"}}}


def honest_entries(output_shape=(2, 3), dtype="F32"):
    sizes = {"F32": 4, "F64": 8, "I64": 8, "BOOL": 1, "U8": 1}
    shapes = {"t0": (list(output_shape), dtype), "t1": ([2], "I64"), "t2": ([3, 3], "F32"), "t3": ([4, 3], "F32")}
    entries, at = {}, 0
    for name, (shape, dt) in shapes.items():
        n = sizes[dt]
        for d in shape:
            n *= d
        entries[name] = {"dtype": dt, "shape": shape, "data_offsets": [at, at + n]}
        at += n
    return entries, at


# ----- honest messages -------------------------------------------------------------------------------
def test_honest_messages_round_trip_with_every_wire_dtype():
    outputs = tuple(torch.arange(6).reshape(2, 3).to(d) for d in P.WIRE_DTYPES)
    msgs = [dict(event="cell_start", index=1), dict(event="cell_end", index=1, error="ValueError: no"),
            dict(event="exercise_start", id="embed"),
            case_msg(0, output=P.to_wire(outputs)), case_msg(1, output=P.to_wire([1, 2.5, None, "hi", True])),
            case_msg(2, output=P.to_wire(torch.zeros(0, 3)), error_type="ZeroDivisionError", timed_out=True),
            dict(event="exercise_end", id="embed"), dict(event="done")]
    got = read_all(b"".join(P.encode(m) for m in msgs), conversation(testing=None))
    assert [m["event"] for m in got] == [m["event"] for m in msgs]
    assert got[1]["error"] == "ValueError: no"
    out = got[3]["output"]
    assert type(out) is tuple and [t.dtype for t in out] == list(P.WIRE_DTYPES)
    assert all(type(t) is torch.Tensor and torch.equal(t, o) for t, o in zip(out, outputs))
    assert got[4]["output"] == [1, 2.5, None, "hi", True]
    assert got[5]["output"].shape == (0, 3) and got[5]["error_type"] == "ZeroDivisionError" and got[5]["timed_out"]
    assert torch.equal(got[3]["inputs_after"]["W_pos"], torch.ones(4, 3))


# ----- only plain dense tensors can be expressed -----------------------------------------------------
class Yes(torch.Tensor):
    def __eq__(self, other):
        return True


ODD = {
    "meta": (lambda: torch.empty(2, 3, device="meta"), "meta device"),
    "nested": (lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]), "nested tensor"),
    "jagged": (lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=torch.jagged), "tensor"),
    "sparse_coo": (lambda: torch.eye(3).to_sparse(), "sparse_coo tensor"),
    "sparse_csr": (lambda: torch.eye(3).to_sparse_csr(), "sparse_csr tensor"),
    "complex": (lambda: torch.ones(2, dtype=torch.complex64), "complex64 tensor"),
    "quantized": (lambda: torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8), "tensor"),
    "subclass": (lambda: torch.ones(2, 3).as_subclass(Yes), "Yes (a tensor subclass"),
    "huge_view": (lambda: torch.zeros(1).expand(10**12), "too large to send"),
    "object": (lambda: object(), "object"),
    "dict": (lambda: {"a": torch.ones(1)}, "dict"),
    "long_str": (lambda: "x" * 10_000, "str of 10000 characters"),
    "big_int": (lambda: 10**30, "int too large"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", sorted(ODD))
def test_odd_outputs_travel_as_descriptions_that_the_judge_rejects(kind):
    make, words = ODD[kind]
    (got,) = read_all(P.encode(case_msg(output=P.to_wire(make()))))
    out = got["output"]
    assert not isinstance(out, torch.Tensor) and words in type(out).__name__, type(out).__name__
    ex = get_exercise("embed")
    case = ex.public_cases()[0]
    v = judge(ex, case, Outcome(output=out, inputs_after=case.kwargs), ex.expected(case.kwargs))
    assert not v.ok and v.kind == "type" and words in v.message


# ----- forged fields: ProtocolError (status `error`), whatever the field ---------------------------------
FORGED = {
    "unknown event": {"event": "full_marks"},
    "no event": {"id": "embed"},
    "not an object": [1, 2, 3],
    "extra field": {**honest_header(), "points": 5},
    "missing field": {k: v for k, v in honest_header().items() if k != "seconds"},
    "case out of range": {**honest_header(), "case": 3},
    "negative case": {**honest_header(), "case": -1},
    "case is a bool": {**honest_header(), "case": True},
    "case is a string": {**honest_header(), "case": "0"},
    "unknown exercise": {**honest_header(), "id": "embedx"},
    "exercise not in this run": {**honest_header(), "id": "other"},
    "cell not in this run": {"event": "cell_start", "index": 2},
    "cell index huge": {"event": "cell_end", "index": 2**70, "error": None},
    "seconds NaN": {**honest_header(), "seconds": float("nan")},
    "seconds negative": {**honest_header(), "seconds": -1},
    "timed_out is an int": {**honest_header(), "timed_out": 1},
    "error_type with code": {**honest_header(), "error_type": "__import__('os').system('x')"},
    "traceback not text": {**honest_header(), "traceback": ["x"]},
    "traceback too long": {**honest_header(), "traceback": "x" * 5000},
    "inputs_after missing one": {**honest_header(), "inputs_after": {"tokens": 1, "W_E": 1}},
    "inputs_after extra one": {**honest_header(), "inputs_after": {**dict.fromkeys(PARAMS, 1), "evil": 1}},
    "inputs_after not a dict": {**honest_header(), "inputs_after": [1, 2, 3]},
    "output of unknown form": {**honest_header(), "output": {"__class__": "os.system"}},
    "output nested too deep": {**honest_header(), "output": [[[[1]]]]},
    "output list too long": {**honest_header(), "output": list(range(17))},
    "output string too long": {**honest_header(), "output": "x" * 1000},
    "output int out of range": {**honest_header(), "output": 2**64},
    "malformed description": {**honest_header(), "output": {"$unsupported": ["x"]}},
    "tensor ref twice": {**honest_header(), "output": [{"$tensor": "t1"}, {"$tensor": "t1"}]},
    "tensor ref odd name": {**honest_header(), "output": {"$tensor": "../x"}},
    "missing names another function": {"event": "missing", "id": "embed", "function": "os.system"},
    "grader_error after learner code": None,  # built below
    "message after done": None,
    "case twice": None,
}


def forged_stream(name):
    if name == "grader_error after learner code":
        return P.encode({"event": "cell_start", "index": 1}) + frame({"event": "grader_error", "message": "x"})
    if name == "message after done":
        return P.encode({"event": "done"}) + P.encode({"event": "cell_start", "index": 1})
    if name == "case twice":
        return P.encode(case_msg(0, output=1)) + P.encode(case_msg(0, output=1))
    return frame(FORGED[name])


@pytest.mark.parametrize("name", sorted(FORGED))
def test_forged_fields_are_protocol_errors(name):
    with pytest.raises(P.ProtocolError):
        read_all(forged_stream(name))


@pytest.mark.parametrize("data", [b"\x00" * 16, b"garbage" * 10, P.MAGIC + b"\x01\x00", frame(b"{not json"),
                                  frame(b"[" * 200_000), frame(b'"\xff\xfe"'), frame(b"{}" * 3)],
                         ids=["zeros", "garbage", "truncated frame", "not json", "deep json", "not utf8",
                              "two objects"])
def test_garbled_bytes_are_protocol_errors(data):
    with pytest.raises(P.ProtocolError):
        read_all(data)


# ----- forged tensor blobs ---------------------------------------------------------------------------
def _blob_with(mutate):
    entries, n = honest_entries()
    mutate(entries)
    return st_blob(entries, b"\x00" * n)


BLOBS = {
    "complex dtype": lambda e: e["t0"].update(dtype="C64"),
    "float8 dtype": lambda e: e["t0"].update(dtype="F8_E4M3"),
    "unknown dtype": lambda e: e["t0"].update(dtype="PICKLE"),
    "negative dim": lambda e: e["t0"].update(shape=[-2, -3]),
    "shape not ints": lambda e: e["t0"].update(shape=["2", 3]),
    "too many dims": lambda e: e["t0"].update(shape=[1] * 9, data_offsets=[0, 4]),
    "size mismatch": lambda e: e["t0"].update(shape=[2, 4]),
    "overlap": lambda e: e["t1"].update(data_offsets=[0, 16]),
    "extra key": lambda e: e["t0"].update(strides=[3, 1]),
    "unreferenced tensor": lambda e: e.update(t9={"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}),
    "missing tensor": lambda e: e.pop("t3"),
    "metadata not strings": lambda e: e.update(__metadata__={"a": 1}),
}


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_forged_tensor_headers_are_protocol_errors(name):
    with pytest.raises(P.ProtocolError):
        read_all(frame(honest_header(), _blob_with(BLOBS[name])))


def test_bool_tensors_hold_only_zero_and_one():
    entries, n = honest_entries(output_shape=(2, 3), dtype="BOOL")
    ok = st_blob(entries, b"\x01" * 6 + b"\x00" * (n - 6))
    (msg,) = read_all(frame(honest_header(), ok))
    assert msg["output"].dtype == torch.bool and msg["output"].all()
    with pytest.raises(P.ProtocolError):
        read_all(frame(honest_header(), st_blob(entries, b"\x02" + b"\x00" * (n - 1))))


def test_tensor_header_cannot_be_nested_json():
    blob = struct.pack("<Q", 100_000) + b"[" * 100_000
    with pytest.raises(P.ProtocolError):
        read_all(frame(honest_header(), blob))


# ----- budgets: output_limit, checked before the bytes are read ---------------------------------------
def test_a_multi_gigabyte_declared_tensor_is_refused_before_any_tensor_byte_is_read():
    entries, n = honest_entries()
    huge = [2**17, 2**17]  # 64 GiB of float32, all declared, none sent
    extra = 2**34 * 4
    entries["t0"] = {"dtype": "F32", "shape": huge, "data_offsets": [0, extra]}
    for name in ("t1", "t2", "t3"):
        a, b = entries[name]["data_offsets"]
        entries[name]["data_offsets"] = [a + extra - 24, b + extra - 24]
    header = st_blob(entries)
    data = frame(honest_header(), header)
    n_blob = len(header) + extra + n - 24
    data = P.FRAME.pack(P.MAGIC, len(json.dumps(honest_header())), n_blob) + data[P.FRAME.size:]
    pipe = Pipe(data + b"\x00" * 1024)
    with pytest.raises(P.OutputLimit, match=r"131072, 131072.*at most 1,000"):
        conversation(max_bytes=2**40).next(pipe)
    assert pipe.pos <= len(data)  # the frame, the plain fields and the tensor header: no tensor data


def test_a_tensor_a_little_over_the_budget_is_output_limit_and_one_under_is_read():
    ok = case_msg(output=torch.zeros(BUDGET - 2 - 9 - 12))  # output + inputs == the budget
    assert read_all(P.encode(ok))[0]["output"].shape == (BUDGET - 23,)
    with pytest.raises(P.OutputLimit, match="this test allows at most 1,000"):
        read_all(P.encode(case_msg(output=torch.zeros(BUDGET - 22))))


def test_too_many_tensors_is_output_limit():
    many = P.to_wire([[[torch.zeros(1)] * 16] * 16] * 2)
    with pytest.raises(P.OutputLimit, match="tensors"):
        read_all(P.encode(case_msg(output=many)))


def test_a_message_flood_is_refused_at_its_first_message_out_of_place_not_an_endless_read():
    talk = conversation(testing=None)
    one = P.encode({"event": "cell_start", "index": 1})
    pipe = Pipe(one * 100_000)
    with pytest.raises(P.ProtocolError, match="cell_start of cell 1 out of order .during cell 1."):
        while talk.next(pipe) is not None:
            pass
    assert talk.messages == 2


def test_messages_are_refused_when_out_of_place():
    """The child runs its cells in order, then tests its exercises in order, each case once and in order;
    learner code that writes to the result pipe (it shares the child's process) cannot interleave."""
    def stream(*msgs):
        return b"".join(P.encode(m) for m in msgs)

    start, end = dict(event="exercise_start", id="embed"), dict(event="exercise_end", id="embed")
    bad = {
        "a case during a cell": stream(dict(event="cell_start", index=1), case_msg(0)),
        "a case before its exercise starts": stream(case_msg(0)),
        "cases out of order": stream(start, case_msg(1)),
        "an exercise ended early": stream(start, case_msg(0), end),
        "a cell after the exercises": stream(start, case_msg(0), case_msg(1), case_msg(2), end,
                                             dict(event="cell_start", index=3)),
        "cells out of order": stream(dict(event="cell_start", index=3), dict(event="cell_end", index=3, error=None),
                                     dict(event="cell_start", index=1)),
        "the end of another cell": stream(dict(event="cell_start", index=1), dict(event="cell_end", index=3, error=None)),
        "done during a cell": stream(dict(event="cell_start", index=1), dict(event="done")),
        "an exercise started twice": stream(start, case_msg(0), case_msg(1), case_msg(2), end, start),
        "missing after a case": stream(start, case_msg(0), dict(event="missing", id="embed", function="embed")),
    }
    for why, data in bad.items():
        with pytest.raises(P.ProtocolError, match="out of order"):
            read_all(data, conversation(testing=None))
            pytest.fail(why)
    honest = stream(dict(event="cell_start", index=1), dict(event="cell_end", index=1, error=None), start,
                    case_msg(0), case_msg(1), case_msg(2), end, dict(event="done"))
    assert len(read_all(honest, conversation(testing=None))) == 8
    missing = stream(start, dict(event="missing", id="embed", function="embed"), dict(event="done"))
    assert len(read_all(missing, conversation(testing=None))) == 3


def test_plain_fields_over_their_size_limit_are_output_limit():
    raw = json.dumps(honest_header()).encode() + b" " * P.MAX_HEADER_BYTES
    with pytest.raises(P.OutputLimit, match="plain fields"):
        read_all(frame(raw))


def test_total_bytes_per_submission_are_capped_across_child_runs():
    channel = P.Channel({"embed": P.ExerciseWire("embed", [PARAMS] * 3, [10**6] * 3)}, n_cells=1, max_bytes=20_000)
    msg = P.encode(case_msg(output=torch.zeros(1000)))
    start = P.encode({"event": "exercise_start", "id": "embed"})
    read_all(start + msg, channel.conversation([], ["embed"]))  # the first run: 4 KB of tensors
    second = channel.conversation([], ["embed"])  # a restarted child: the budget is the submission's
    read_all(start, second)
    with pytest.raises(P.OutputLimit, match="in all"):
        read_all(b"".join(P.encode(case_msg(k, output=torch.zeros(2000))) for k in range(3)), second)


def test_case_budget_scales_with_the_right_answer_and_the_inputs():
    small = P.case_budget(torch.zeros(3), {"x": torch.zeros(5)})
    big = P.case_budget((torch.zeros(100, 100), torch.zeros(10)), {"x": torch.zeros(5), "n": 3})
    assert small == P.BUDGET_FACTOR * 8 + P.BUDGET_FLOOR
    assert big == P.BUDGET_FACTOR * (10_010 + 5) + P.BUDGET_FLOOR


def test_text_from_the_pipe_is_printable_and_utf8():
    msg = case_msg(traceback="line1\nline2\x1b[31m\udcff\u2028end", output="a\x00b")
    (got,) = read_all(P.encode(msg))
    got["traceback"].encode("utf-8")
    assert "\x1b" not in got["traceback"] and "\u2028" not in got["traceback"] and "line1\nline2" in got["traceback"]
    assert got["output"] == "a?b"


def test_the_instructor_guide_states_the_limits_the_code_applies():
    from pathlib import Path

    from tinyinterp.grading.notebook import MAX_NOTEBOOK_BYTES

    guide = " ".join((Path(__file__).resolve().parents[1] / "book" / "instructor_guide.md").read_text().split())
    assert f"{P.BUDGET_FACTOR} times the elements of a right answer plus the inputs, plus {P.BUDGET_FLOOR:,}" in guide
    assert f"over {MAX_NOTEBOOK_BYTES // 2**20} MiB" in guide
