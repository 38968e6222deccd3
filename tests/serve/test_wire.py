import msgpack
import numpy as np
import pytest

from pirecon.errors import InputError
from pirecon.serve.wire import packb, unpackb


def _openpi_array(a: np.ndarray) -> dict:
    """openpi_client.msgpack_numpy's encoding of an array, spelled out."""
    return {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str, b"shape": a.shape}


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.array([1.5, -2.0], dtype=">f8"),  # byte order travels in dtype.str
    np.arange(6, dtype=np.int64).reshape(2, 3).T,  # not contiguous
    np.zeros((0, 3), dtype=np.float16),
    np.array(3.0, dtype=np.float64),  # 0-d
    np.array(["ab", "c"]),
    np.array([True, False]),
])
def test_arrays_round_trip(array):
    out = unpackb(packb({"x": array}))["x"]
    assert isinstance(out, np.ndarray)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_numpy_scalars_and_nested_values_round_trip():
    value = {"a": np.float32(1.5), "b": np.int64(-3), "c": [1, "x", {"d": np.bool_(True)}], "e": None, "f": b"raw"}
    out = unpackb(packb(value))
    assert type(out["a"]) is np.float32 and out["a"] == np.float32(1.5)
    assert type(out["b"]) is np.int64 and out["b"] == -3
    assert type(out["c"][2]["d"]) is np.bool_ and out["c"][2]["d"]
    assert out["c"][:2] == [1, "x"] and out["e"] is None and out["f"] == b"raw"


def test_bytes_are_openpis_wire_format():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert packb({"actions": a}) == msgpack.packb({"actions": _openpi_array(a)}, use_bin_type=True)
    scalar = msgpack.packb({b"__npgeneric__": True, b"data": 2.5, b"dtype": "<f4"}, use_bin_type=True)
    assert packb(np.float32(2.5)) == scalar
    # ... and openpi-encoded messages decode here.
    decoded = unpackb(msgpack.packb({"image": _openpi_array(np.ones((2, 2, 3), np.uint8)), "prompt": "go"}))
    assert decoded["image"].shape == (2, 2, 3) and decoded["image"].dtype == np.uint8 and decoded["prompt"] == "go"


def test_refuses_to_pack_object_and_complex_arrays():
    for bad in (np.array([object()]), np.array([1 + 2j])):
        with pytest.raises(TypeError, match="dtype"):
            packb({"x": bad})
    with pytest.raises(TypeError, match="set"):
        packb({"x": {1, 2}})


@pytest.mark.parametrize("payload, fragment", [
    (b"\xc1", "not valid msgpack"),
    (b"\x85\xa3abc", "not valid msgpack"),
    (b"\x01\x02", "not valid msgpack"),  # extra data after the first object
    (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]}), "needs 8 bytes"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}), "object or structured"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "nonsense", b"shape": [0]}), "'nonsense'"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}), "shape"),
    (msgpack.packb({b"__npgeneric__": True, b"data": "x", b"dtype": "<f4"}), "numpy scalar"),
])
def test_malformed_messages_raise_input_error(payload, fragment):
    with pytest.raises(InputError, match=fragment.replace("(", r"\(")):
        unpackb(payload)


def test_text_is_not_a_message():
    with pytest.raises(InputError, match="binary msgpack"):
        unpackb("hello")
