"""Wire codec and request parsing: round trips, openpi's bytes, and hostile input (no server)."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import cv2
import msgpack
import numpy as np
import pytest
from policy_fakes import openpi_packb, openpi_unpackb

from policy_server import codec
from policy_server.observation import InputLimits, RequestError, image_file_size, parse_request

pytestmark = pytest.mark.timeout(30)

LIMITS = InputLimits()


def array_map(data: bytes, dtype: str, shape, keys_as_bytes: bool = True) -> dict:
    k = (lambda s: s.encode()) if keys_as_bytes else (lambda s: s)
    return {k("__ndarray__"): True, k("data"): data, k("dtype"): dtype, k("shape"): list(shape)}


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", sorted(str(d) for d in codec.ALLOWED_DTYPES))
def test_round_trip_every_allowed_dtype(dtype):
    a = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    out = codec.unpackb(codec.packb({"a": a, "nested": [{"b": a[0]}], "s": "x", "n": 3}))
    assert out["a"].dtype == a.dtype and np.array_equal(out["a"], a)
    assert np.array_equal(out["nested"][0]["b"], a[0]) and out["s"] == "x" and out["n"] == 3


def test_arrays_are_written_as_openpi_maps_with_bytes_keys():
    a = np.ones((4, 7), np.float32)
    raw = msgpack.unpackb(codec.packb({"actions": a}))
    assert raw["actions"] == {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": "<f4", b"shape": [4, 7]}
    assert np.array_equal(openpi_unpackb(codec.packb({"actions": a}))["actions"], a)


def test_decodes_openpi_bytes_and_str_keys_and_scalars():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = codec.unpackb(openpi_packb({"observation/image": image, "prompt": "hi", "t": np.float32(0.5)}))
    assert np.array_equal(out["observation/image"], image) and out["prompt"] == "hi" and out["t"] == 0.5
    str_keys = msgpack.packb({"x": array_map(image.tobytes(), "|u1", image.shape, keys_as_bytes=False)})
    assert np.array_equal(codec.unpackb(str_keys)["x"], image)


def test_big_endian_arrays_become_native():
    a = np.arange(5, dtype=">f4")
    out = codec.unpackb(msgpack.packb(array_map(a.tobytes(), ">f4", a.shape)))
    assert out.dtype == np.float32 and out.dtype.isnative and np.array_equal(out, a)


def test_refuses_to_encode_object_arrays():
    with pytest.raises(TypeError):
        codec.packb({"a": np.array([object()], dtype=object)})


# ----------------------------------------------------------------------------- hostile msgpack


def _bad(data: bytes, match: str, limits: codec.Limits = codec.DEFAULT_LIMITS) -> None:
    with pytest.raises(codec.CodecError, match=match):
        codec.unpackb(data, limits)


@pytest.mark.parametrize("dtype", ["|O", "O", "<U4", "|V8", "<M8[s]", "<c8", "[('a', '<f4')]", "(2,)f4", "nope", ""])
def test_dtype_allow_list(dtype):
    _bad(msgpack.packb(array_map(b"\0" * 8, dtype, [1])), "dtype")


def test_pickled_object_array_is_refused_not_unpickled():
    import pickle

    payload = pickle.dumps(np.array([{"evil": 1}], dtype=object))
    _bad(msgpack.packb(array_map(payload, "|O", [1])), "dtype")


@pytest.mark.parametrize(("data", "shape", "match"), [
    (b"\0" * 11, [3], "needs 12"),  # too short for 3 float32
    (b"\0" * 13, [3], "needs 12"),  # too long
    (b"\0" * 4, [2**40, 2**40], "exceeds the limit"),  # a huge declared shape
    (b"\0" * 4, [-1], "non-negative"),
    (b"\0" * 4, [True], "non-negative"),
    (b"\0" * 4, [1.0], "non-negative"),
    (b"\0" * 4, "4", "shape"),
    (b"\0" * 4, [1] * 9, "shape"),
])
def test_array_size_checks(data, shape, match):
    _bad(msgpack.packb({**array_map(data, "<f4", [1]), b"shape": shape}), match)


def test_array_map_with_extra_keys_or_missing_fields():
    good = array_map(b"\0" * 4, "<f4", [1])
    _bad(msgpack.packb({**good, b"extra": 1}), "exactly")
    _bad(msgpack.packb({k: v for k, v in good.items() if k != b"dtype"} | {b"x": 1}), "no 'dtype'")
    _bad(msgpack.packb({**good, b"data": "text"}), "bytes")


def test_max_array_bytes():
    limits = codec.Limits(max_array_bytes=100)
    _bad(msgpack.packb(array_map(b"\0" * 400, "<f4", [100])), "exceeds", limits)


def test_extension_types_and_timestamps_are_refused():
    _bad(msgpack.packb({"a": msgpack.ExtType(1, b"abc")}), "exceeds max_ext_len|extension")
    _bad(msgpack.packb(msgpack.ExtType(42, b"")), "extension")
    _bad(msgpack.packb({"t": msgpack.Timestamp(1, 0)}), "max_ext_len")


def test_truncated_trailing_and_garbage():
    good = codec.packb({"image": np.zeros((4, 4, 3), np.uint8), "instruction": "x"})
    for cut in (1, 5, len(good) // 2, len(good) - 1):
        _bad(good[:cut], "malformed")
    _bad(good + b"\x00", "malformed")
    _bad(b"\xc1", "malformed")  # the one byte msgpack never uses


def test_huge_declared_lengths_do_not_allocate():
    _bad(b"\xdd\xff\xff\xff\xff", "malformed")  # array32 of 4G items
    _bad(b"\xdf\xff\xff\xff\xff", "malformed")  # map32 of 4G pairs
    _bad(b"\xc6\xff\xff\xff\xff" + b"ab", "malformed")  # bin32 of 4 GB
    _bad(b"\xdb\xff\xff\xff\xff" + b"ab", "malformed")  # str32 of 4 GB


def test_depth_bombs():
    _bad(b"\x91" * 100_000 + b"\xc0", "nested too deeply")  # deeper than msgpack's own stack
    _bad(b"\x91" * 40 + b"\xc0", "deeper than 32")  # within msgpack's stack, over our limit
    _bad(b"\x81\xa1a" * 40 + b"\xc0", "deeper than 32")  # maps
    assert codec.unpackb(b"\x91" * 10 + b"\xc0") is not None


def test_bad_utf8_and_non_string_keys():
    _bad(b"\xa2\xff\xfe", "malformed")
    _bad(msgpack.packb({1: 2}), "malformed")
    _bad(msgpack.packb({(1, 2): 2}), "malformed")


def test_message_size_limit():
    _bad(b"\xc0" * 101, "exceeds", codec.Limits(max_message_bytes=100))


# ------------------------------------------------------------------------------- json_numpy


def json_numpy_encode(a: np.ndarray) -> dict:
    """json_numpy's own encoding (dtype via numpy.lib.format.dtype_to_descr, i.e. dtype.str here)."""
    return {"__numpy__": base64.b64encode(a.tobytes()).decode(), "dtype": a.dtype.str, "shape": list(a.shape)}


def test_json_numpy_round_trip_and_compatibility():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = codec.json_loads(json.dumps({"a": json_numpy_encode(a), "s": "x"}))
    assert np.array_equal(out["a"], a) and out["s"] == "x"
    assert json.loads(codec.json_dumps(a)) == json_numpy_encode(a)
    scalar = codec.json_loads(json.dumps(json_numpy_encode(np.array([2.5]))).replace("[1]", "[]"))
    assert scalar == 2.5


@pytest.mark.parametrize(("text", "match"), [
    ('{"__numpy__": "!!!", "dtype": "<f4", "shape": [1]}', "base64"),
    ('{"__numpy__": "AAAA", "dtype": "|O", "shape": [1]}', "dtype"),
    ('{"__numpy__": "AAAA", "dtype": "<f4", "shape": [2]}', "needs 8"),
    ('{"__numpy__": "AAAA", "dtype": "<f4"}', "exactly"),
    ('{"__numpy__": 5, "dtype": "<f4", "shape": [1]}', "base64"),
    ('{"a": NaN}', "constant"),
    ('{"a": ', "malformed JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    ("[" * 40 + "]" * 40, "deeper"),
    (b"\xff\xfe", "malformed JSON"),
])
def test_json_numpy_hostile(text, match):
    with pytest.raises(codec.CodecError, match=match):
        codec.json_loads(text)


# ---------------------------------------------------------------------------- request parsing


def _image(h=224, w=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(1, 1), (31, 64), (64, 8)])
def test_images_below_the_minimum_side_are_refused(shape):
    small = _image(*shape)
    for image in (small, cv2.imencode(".png", small)[1].tobytes()):
        with pytest.raises(RequestError, match="minimum side 32") as err:
            parse_request({"image": image, "instruction": "x"}, (64, 64), LIMITS)
        assert err.value.status == 422 and "'image'" in str(err.value)
    parse_request({"image": _image(32, 40), "instruction": "x"}, (64, 64), LIMITS)  # at the minimum: resized


def test_parse_raw_jpeg_png_and_resize():
    image = _image()
    req = parse_request({"image": image, "instruction": " pick ", "request_id": "r1"}, (224, 224), LIMITS)
    assert req.obs["instruction"] == "pick" and req.request_id == "r1" and req.client_id
    assert np.array_equal(req.obs["image"], image)
    smooth = cv2.GaussianBlur(image, (9, 9), 3)
    for ext in (".png", ".jpg"):
        ok, data = cv2.imencode(ext, cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR))
        decoded = parse_request({"image": data.tobytes(), "instruction": "x"}, (224, 224), LIMITS).obs["image"]
        assert decoded.shape == (224, 224, 3) and np.abs(decoded.astype(int) - smooth).mean() < 3
    big = parse_request({"image": _image(480, 640), "instruction": "x"}, (224, 224), LIMITS)
    assert big.obs["image"].shape == (224, 224, 3) and not big.client_id
    with pytest.raises(RequestError, match="must be 224x224"):
        parse_request({"image": _image(480, 640), "instruction": "x"}, (224, 224), InputLimits(resize=False))


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def test_image_bombs_are_refused_from_the_header():
    with pytest.raises(RequestError, match="outside"):
        parse_request({"image": _png_header(100_000, 100_000) + b"\0" * 64, "instruction": "x"}, (224, 224), LIMITS)
    sof = b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60_000, 60_000) + b"\x03" + b"\0" * 9
    assert image_file_size(sof)[1:] == (60_000, 60_000)
    with pytest.raises(RequestError, match="outside"):
        parse_request({"image": sof, "instruction": "x"}, (224, 224), LIMITS)
    for junk in (b"GIF89a....", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", _png_header(8, 8)):
        with pytest.raises(RequestError):
            parse_request({"image": junk, "instruction": "x"}, (224, 224), LIMITS)


@pytest.mark.parametrize(("msg", "match"), [
    ([1, 2], "must be a map"),
    ({"instruction": "x"}, "no 'image'"),
    ({"image": "IMG"}, "no 'instruction'"),
    ({"image": "IMG", "instruction": 5}, "'instruction' must be a string"),
    ({"image": "IMG", "instruction": b"bytes"}, "'instruction' must be a string"),
    ({"image": "IMG", "instruction": ["a"]}, "'instruction' must be a string"),
    ({"image": "IMG", "instruction": {"text": "a"}}, "'instruction' must be a string"),
    ({"image": "IMG", "instruction": "   "}, "empty"),
    ({"image": "IMG", "instruction": "x" * 513}, "513 characters"),
    ({"image": np.zeros((224, 224, 3), np.float32), "instruction": "x"}, "uint8"),
    ({"image": np.zeros((224, 224), np.uint8), "instruction": "x"}, r"\(H, W, 3\)"),
    ({"image": np.zeros((224, 224, 4), np.uint8), "instruction": "x"}, r"\(H, W, 3\)"),
    ({"image": np.zeros((1, 5000, 3), np.uint8), "instruction": "x"}, "outside"),
    ({"image": 7, "instruction": "x"}, "'image' must be"),
    ({"image": "IMG", "instruction": "x", "state": [1.0] * 7}, r"shape \(8,\)"),
    ({"image": "IMG", "instruction": "x", "state": ["a"] * 8}, "'state' must be"),
    ({"image": "IMG", "instruction": "x", "state": [float("nan")] * 8}, "non-finite"),
    ({"image": "IMG", "instruction": "x", "request_id": ""}, "request_id"),
    ({"image": "IMG", "instruction": "x", "request_id": "x" * 129}, "request_id"),
    ({"image": "IMG", "instruction": "x", "request_id": 1.5}, "request_id"),
    ({"image": "IMG", "instruction": "x", "request_id": True}, "request_id"),
])
def test_bad_requests_name_the_field(msg, match):
    if isinstance(msg, dict) and isinstance(msg.get("image"), str):
        msg = {**msg, "image": _image()}
    with pytest.raises(RequestError, match=match) as info:
        parse_request(msg, (224, 224), LIMITS)
    assert info.value.status == 422


def test_state_and_ids():
    req = parse_request({"image": _image(), "instruction": "x", "state": list(range(8)), "request_id": 7},
                        (224, 224), LIMITS)
    assert req.obs["state"].dtype == np.float32 and req.request_id == 7
    a = parse_request({"image": _image(), "instruction": "x", "request_id": "a"}, (224, 224), LIMITS)
    b = parse_request({"image": _image(seed=1), "instruction": "x", "request_id": "a"}, (224, 224), LIMITS)
    c = parse_request({"image": _image(), "instruction": "y", "request_id": "a"}, (224, 224), LIMITS)
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    d = parse_request({"image": _image(), "instruction": "x"}, (224, 224), LIMITS)
    e = parse_request({"image": _image(), "instruction": "x"}, (224, 224), LIMITS)
    assert d.request_id != e.request_id and not d.client_id  # server-made ids: never deduplicated
