"""The convolution lab against the lecture's hand-worked figures and against NumPy, SciPy and
PyTorch on random integer inputs (exact in float64, so comparisons are exact)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.errors import ConfigError, DataError
from cnnlab.explain.conv import (
    LECTURE_EXAMPLES,
    avg_pool2d,
    convolve1d,
    convolve2d,
    explain_convolution1d,
    explain_convolution2d,
    flatten,
    format_steps,
    load_array_image,
    max_pool2d,
    parse_array,
    relu,
    run_example,
    run_lab,
    steps_table,
)

SETTINGS = settings(max_examples=100, deadline=None)
# torch warns that padding="same" with an even kernel copies the input; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

LECTURE_IMAGE = [
    [1, 1, 1, 0, 0],
    [0, 1, 1, 1, 0],
    [0, 0, 1, 1, 1],
    [0, 0, 1, 1, 0],
    [0, 1, 1, 0, 0],
]
LECTURE_FILTER = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]


# ------------------------------------------------------------------------------------------
# The lecture's worked examples (numbers copied from the lecture)
# ------------------------------------------------------------------------------------------


def test_hospital_plan_times_patients_is_a_full_convolution():
    # "[3 2 1] * [1 2 3 4 5] = [3 8 14 20 26 14 5]"
    y = convolve1d([1, 2, 3, 4, 5], [3, 2, 1], op="convolution", mode="full")
    assert y.tolist() == [3, 8, 14, 20, 26, 14, 5]
    # "[3] * [1 2 3 4 5] = [3 6 9 12 15]": a one-day plan is everyday multiplication
    one_day = convolve1d([1, 2, 3, 4, 5], [3], op="convolution", mode="full")
    assert one_day.tolist() == [3, 6, 9, 12, 15]


def test_sliding_without_flipping_is_a_valid_correlation():
    # a = [5, 3, 2, 5, 9, 7], b = [1, 2, 3] -> [17, 22, ...]; 39 = 2+10+27, 44 = 5+18+21
    y = convolve1d([5, 3, 2, 5, 9, 7], [1, 2, 3], op="correlation", mode="valid")
    assert y.tolist() == [17, 22, 39, 44]
    # flipping would give a different answer here: the lecture's slide does not flip
    flipped = convolve1d([5, 3, 2, 5, 9, 7], [1, 2, 3], op="convolution", mode="valid")
    assert flipped.tolist() != [17, 22, 39, 44]


def test_lecture_image_and_filter_give_the_feature_map():
    expected = [[4, 3, 4], [2, 4, 3], [2, 3, 4]]
    for op in ("correlation", "convolution"):  # the filter is symmetric: both agree
        y = convolve2d(LECTURE_IMAGE, LECTURE_FILTER, op=op, mode="valid")
        assert y.tolist() == expected


def test_lecture_examples_list_matches_the_lecture_and_the_code():
    by_name = {ex.name: ex for ex in LECTURE_EXAMPLES}
    assert by_name["hospital"].expected == (3, 8, 14, 20, 26, 14, 5)
    assert by_name["slide"].expected[:2] == (17, 22)
    assert by_name["image"].expected == ((4, 3, 4), (2, 4, 3), (2, 3, 4))
    for ex in LECTURE_EXAMPLES:
        fn = convolve1d if np.ndim(ex.x) == 1 else convolve2d
        np.testing.assert_array_equal(fn(ex.x, ex.w, **ex.options), np.array(ex.expected))
        result = run_example(ex.name, explain=True)
        assert "agrees" in result.notes[0]
        assert [s.total for s in result.steps] == np.array(ex.expected).reshape(-1).tolist()


def test_hospital_steps_walk_the_flipped_list_through_the_rooms():
    steps = explain_convolution1d([1, 2, 3, 4, 5], [3, 2, 1], op="convolution", mode="full")
    assert len(steps) == 7
    # Monday: one patient in room 1 (dose 3): usage 3
    monday = steps[0]
    assert [t.weight for t in monday.terms] == [3, 2, 1]  # rooms in order
    assert [t.product for t in monday.terms] == [3, 0, 0]
    assert [t.padded for t in monday.terms] == [False, True, True]
    # Tuesday: "Usage 6 2 = 8" (2 new patients x 3, the Monday patient x 2)
    tuesday = steps[1]
    assert [t.value for t in tuesday.terms[:2]] == [2, 1]  # the flipped patient list
    assert [t.product for t in tuesday.terms] == [6, 2, 0]
    assert tuesday.total == 8
    text = format_steps(steps)
    assert "FLIPPED" in text and "computes a correlation" in " ".join(text.split())
    rows = {
        line.split("|")[0].strip(): line.split("|") for line in text.splitlines() if "|" in line
    }
    assert [cell.split() for cell in rows["1"][1:]] == [
        ["3", "2", "1"],
        ["2", "1", "."],
        ["6", "2", "0"],
        ["8"],
    ]


def test_slide_steps_show_the_lecture_products():
    steps = explain_convolution1d([5, 3, 2, 5, 9, 7], [1, 2, 3], op="correlation", mode="valid")
    # "[5, 6, 6] -> 17" and "[3, 4, 15] -> 22"
    assert [t.product for t in steps[0].terms] == [5, 6, 6] and steps[0].total == 17
    assert [t.product for t in steps[1].terms] == [3, 4, 15] and steps[1].total == 22
    text = " ".join(format_steps(steps).split())  # the caption is wrapped at 100 columns
    assert "WITHOUT flipping" in text
    assert "CNN 'convolution' layer computes" in text


def test_relu_pool_flatten_by_hand():
    feature_map = np.array([[1, -2, 3, -4], [-5, 6, -7, 8], [9, -10, 11, -12], [-13, 14, -15, 16]])
    rectified = relu(feature_map)
    assert rectified.tolist() == [[1, 0, 3, 0], [0, 6, 0, 8], [9, 0, 11, 0], [0, 14, 0, 16]]
    pooled = max_pool2d(rectified, size=2)
    assert pooled.tolist() == [[6, 8], [14, 16]]
    assert avg_pool2d(rectified, size=2).tolist() == [[1.75, 2.75], [5.75, 6.75]]
    assert flatten(pooled).tolist() == [6, 8, 14, 16]
    small = np.arange(1, 10).reshape(3, 3)  # [[1 2 3] [4 5 6] [7 8 9]]
    assert max_pool2d(small, size=2, stride=1).tolist() == [[5, 6], [8, 9]]
    assert max_pool2d(small, size=2).tolist() == [[5]]  # the incomplete edge is dropped
    assert relu([-0.5, 0.0, 2.5]).tolist() == [0.0, 0.0, 2.5]


# ------------------------------------------------------------------------------------------
# Properties against references
# ------------------------------------------------------------------------------------------

ints = st.integers(-5, 5)


@st.composite
def signal_and_kernel(draw, min_n=1, odd_kernel=False, kernel_fits=True):
    n = draw(st.integers(min_n, 12))
    k = draw(st.integers(1, n if kernel_fits else 12))
    if odd_kernel and k % 2 == 0:
        k -= 1
    x = np.array(draw(st.lists(ints, min_size=n, max_size=n)), dtype=np.int64)
    w = np.array(draw(st.lists(ints, min_size=k, max_size=k)), dtype=np.int64)
    return x, w


@SETTINGS
@given(signal_and_kernel(), st.sampled_from(["full", "valid"]))
def test_1d_convolution_equals_numpy_and_scipy(xw, mode):
    x, w = xw
    y = convolve1d(x, w, op="convolution", mode=mode)
    np.testing.assert_array_equal(y, np.convolve(x, w, mode=mode))
    np.testing.assert_array_equal(y, scipy.signal.convolve(x, w, mode=mode, method="direct"))
    corr = convolve1d(x, w, op="correlation", mode=mode)
    np.testing.assert_array_equal(corr, scipy.signal.correlate(x, w, mode=mode, method="direct"))
    np.testing.assert_array_equal(corr, np.correlate(x, w, mode=mode))


@SETTINGS
@given(signal_and_kernel(odd_kernel=True))
def test_1d_same_equals_numpy_and_scipy_for_odd_kernels(xw):
    x, w = xw
    y = convolve1d(x, w, op="convolution", mode="same")
    np.testing.assert_array_equal(y, np.convolve(x, w, mode="same"))
    np.testing.assert_array_equal(y, scipy.signal.convolve(x, w, mode="same", method="direct"))
    corr = convolve1d(x, w, op="correlation", mode="same")
    np.testing.assert_array_equal(corr, scipy.signal.correlate(x, w, mode="same"))


@SETTINGS
@given(signal_and_kernel(min_n=2), st.sampled_from(["convolution", "correlation"]))
def test_1d_same_with_even_kernel_puts_the_extra_zero_on_the_right(xw, op):
    x, w = xw
    if len(w) % 2:
        w = np.append(w, 1)  # make k even (may now exceed n: "same" still works)
    k, n = len(w), len(x)
    full = scipy.signal.convolve(x, w) if op == "convolution" else scipy.signal.correlate(x, w)
    ours = convolve1d(x, w, op=op, mode="same")
    # torch's rule (extra zero right): start k//2 into "full"; scipy/numpy start at (k-1)//2
    np.testing.assert_array_equal(ours, full[k // 2 : k // 2 + n])
    if n >= k:
        ref = scipy.signal.convolve if op == "convolution" else scipy.signal.correlate
        np.testing.assert_array_equal(ref(x, w, mode="same"), full[(k - 1) // 2 : (k - 1) // 2 + n])


def _torch_reference(x, w, *, op, mode, stride, padding, dilation):
    """torch.nn.functional.conv1d/conv2d (a correlation); convolution = flipped kernel."""
    nd = x.ndim
    xt = torch.from_numpy(x.astype(np.float64))[None, None]
    wt = torch.from_numpy(w.astype(np.float64))[None, None]
    if op == "convolution":
        wt = torch.flip(wt, dims=tuple(range(2, 2 + nd)))
    conv = F.conv1d if nd == 1 else F.conv2d
    k_eff = [d * (k - 1) + 1 for d, k in zip(dilation, w.shape, strict=True)]
    if mode == "valid":
        out = conv(xt, wt, stride=stride, padding=padding, dilation=dilation)
    elif mode == "full":
        out = conv(xt, wt, stride=stride, padding=[k - 1 for k in k_eff], dilation=dilation)
    elif all(s == 1 for s in stride):
        out = conv(xt, wt, padding="same", dilation=dilation)
    else:  # torch refuses "same" with stride > 1: TensorFlow's "SAME" (extra zero right/bottom)
        pads = []
        for n, s, ke in zip(x.shape, stride, k_eff, strict=True):
            total = max((math.ceil(n / s) - 1) * s + ke - n, 0)
            pads.append((total // 2, total - total // 2))
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
        out = conv(F.pad(xt, flat), wt, stride=stride, dilation=dilation)
    return out[0, 0].numpy()


@st.composite
def conv_case(draw, nd):
    shape = tuple(draw(st.integers(1, 9)) for _ in range(nd))
    kshape = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    x = np.array(draw(st.lists(ints, min_size=math.prod(shape), max_size=math.prod(shape))))
    w = np.array(draw(st.lists(ints, min_size=math.prod(kshape), max_size=math.prod(kshape))))
    mode = draw(st.sampled_from(["full", "valid", "same"]))
    options = {
        "op": draw(st.sampled_from(["convolution", "correlation"])),
        "mode": mode,
        "stride": tuple(draw(st.integers(1, 3)) for _ in range(nd)),
        "padding": tuple(draw(st.integers(0, 2)) for _ in range(nd))
        if mode == "valid"
        else (0,) * nd,
        "dilation": tuple(draw(st.integers(1, 3)) for _ in range(nd)),
    }
    return x.reshape(shape), w.reshape(kshape), options


def _check_against_torch(x, w, options):
    fn = convolve1d if x.ndim == 1 else convolve2d
    try:
        ours = fn(x, w, **options)
    except ConfigError:
        # we refuse only when the kernel cannot fit; torch must refuse as well
        assert options["mode"] == "valid"
        with pytest.raises(RuntimeError):
            _torch_reference(x, w, **options)
        return
    np.testing.assert_array_equal(ours, _torch_reference(x, w, **options))
    if options["mode"] == "same":
        expected = tuple(math.ceil(n / s) for n, s in zip(x.shape, options["stride"], strict=True))
        assert ours.shape == expected


@SETTINGS
@given(conv_case(1))
def test_1d_equals_torch_for_every_mode_stride_padding_dilation(case):
    _check_against_torch(*case)


@SETTINGS
@given(conv_case(2))
def test_2d_equals_torch_for_every_mode_stride_padding_dilation(case):
    _check_against_torch(*case)


@SETTINGS
@given(
    st.integers(3, 8),
    st.integers(3, 8),
    st.sampled_from([1, 3]),
    st.sampled_from([1, 3]),
    st.sampled_from(["full", "valid", "same"]),
    st.data(),
)
def test_2d_equals_scipy(h, w_, kh, kw, mode, data):
    image = np.array(data.draw(st.lists(ints, min_size=h * w_, max_size=h * w_))).reshape(h, w_)
    kernel = np.array(data.draw(st.lists(ints, min_size=kh * kw, max_size=kh * kw)))
    kernel = kernel.reshape(kh, kw)
    np.testing.assert_array_equal(
        convolve2d(image, kernel, op="convolution", mode=mode),
        scipy.signal.convolve2d(image, kernel, mode=mode),
    )
    np.testing.assert_array_equal(
        convolve2d(image, kernel, op="correlation", mode=mode),
        scipy.signal.correlate2d(image, kernel, mode=mode),
    )


@SETTINGS
@given(st.sampled_from([1, 2]).flatmap(conv_case))
def test_explain_steps_add_up_to_the_outputs(case):
    x, w, options = case
    fn, explain = (
        (convolve1d, explain_convolution1d) if x.ndim == 1 else (convolve2d, explain_convolution2d)
    )
    try:
        y = fn(x, w, **options)
    except ConfigError:
        return
    steps = explain(x, w, **options)
    assert [s.output_index for s in steps] == [tuple(i) for i in np.ndindex(y.shape)]
    assert [s.total for s in steps] == y.reshape(-1).tolist()
    flipped = np.flip(w) if options["op"] == "convolution" else w
    for step in steps:
        assert sum(t.product for t in step.terms) == step.total
        assert [t.weight_index for t in step.terms] == [tuple(i) for i in np.ndindex(w.shape)]
        for t in step.terms:
            assert t.weight == w[t.weight_index] and t.product == t.weight * t.value
            inside = all(0 <= i < n for i, n in zip(t.input_index, x.shape, strict=True))
            assert t.padded == (not inside)
            assert t.value == (x[t.input_index] if inside else 0)
    assert flipped.shape == w.shape


@SETTINGS
@given(
    st.integers(2, 7),
    st.integers(2, 7),
    st.integers(1, 3),
    st.integers(1, 3),
    st.data(),
)
def test_pooling_equals_torch(h, w_, size, stride, data):
    size = min(size, h, w_)
    x = np.array(data.draw(st.lists(ints, min_size=h * w_, max_size=h * w_))).reshape(h, w_)
    xt = torch.from_numpy(x.astype(np.float64))[None, None]
    np.testing.assert_array_equal(
        max_pool2d(x, size, stride), F.max_pool2d(xt, size, stride)[0, 0].numpy()
    )
    np.testing.assert_allclose(
        avg_pool2d(x, size, stride), F.avg_pool2d(xt, size, stride)[0, 0].numpy(), rtol=1e-12
    )
    np.testing.assert_array_equal(relu(x), F.relu(xt)[0, 0].numpy())
    np.testing.assert_array_equal(flatten(x), torch.flatten(xt[0, 0]).numpy())


# ------------------------------------------------------------------------------------------
# Options that do not make sense
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"op": "convolutoin"}, "did you mean: convolution"),
        ({"mode": "ful"}, "did you mean: full"),
        ({"mode": "full", "padding": 1}, "cannot be combined with mode='full'"),
        ({"mode": "same", "padding": 2}, "mode='valid' with padding"),
        ({"stride": 0}, "stride=0"),
        ({"dilation": (1, 2)}, "dilation=(1, 2)"),
        ({"padding": -1}, "padding=-1"),
        ({"mode": "valid", "dilation": 3}, "does not fit"),
    ],
)
def test_bad_options_raise_config_error(options, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        convolve1d([1, 2, 3, 4, 5], [3, 2, 1], **options)


def test_2d_pairs_and_text_options():
    image = np.arange(25).reshape(5, 5)
    y = convolve2d(image, [[1, 0], [0, 1]], op="correlation", stride="2,1", padding=(1, 0))
    assert y.shape == ((5 + 2 - 2) // 2 + 1, 5 - 2 + 1)
    with pytest.raises(ConfigError, match="2 integers"):
        convolve2d(image, [[1]], stride=(1, 2, 3))
    with pytest.raises(ConfigError, match="must be 2-D"):
        convolve2d([1, 2, 3], [[1]])


# ------------------------------------------------------------------------------------------
# Command-line input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 2 1", [3, 2, 1]),
        ("[3 2 1]", [3, 2, 1]),
        ("3,2,1", [3, 2, 1]),
        (" 3, 2 ,1 ", [3, 2, 1]),
        ("1 1 1; 0 1 1", [[1, 1, 1], [0, 1, 1]]),
        ("[1 1 1; 0 1 1]", [[1, 1, 1], [0, 1, 1]]),
        ("[[1 0 1] [0 1 0] [1 0 1]]", [[1, 0, 1], [0, 1, 0], [1, 0, 1]]),
        ("[[1,0],[0,1]]", [[1, 0], [0, 1]]),
        ("[[1 2 3]]", [[1, 2, 3]]),
        ("0.5 -1 2e1", [0.5, -1.0, 20.0]),
    ],
)
def test_parse_array(text, expected):
    array = parse_array(text)
    assert array.tolist() == expected
    assert array.dtype == (np.float64 if "." in text or "e" in text else np.int64)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1 2; 3", "ragged rows .* row 2 \\('3'\\) has 1"),
        ("[[1 2] [3]]", "ragged"),
        ("1 a 3", "'a'"),
        ("1 2;;3 4", "row 2 .* is empty"),
        ("[1 2", "unbalanced"),
        ("1 2]", "unbalanced"),
        ("[[1 2] x [3 4]]", "'x'"),
        ("[[[1]]]", "nested"),
        ("", "empty"),
        ("1 nan", "'nan'.*not a finite"),
    ],
)
def test_parse_array_errors_name_the_text(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_array(text)


def test_run_lab_with_text_and_explain():
    result = run_lab("1 2 3 4 5", "3 2 1", op="convolution", mode="full", explain=True)
    assert result.output.tolist() == [3, 8, 14, 20, 26, 14, 5]
    assert len(result.steps) == result.steps_total == 7
    assert result.pads == ((2, 2),)
    text = result.format()
    assert "y = [3 8 14 20 26 14 5]" in text and "FLIPPED" in text
    assert "rooms" not in result.format(lecture_words=False)
    table = steps_table(result.steps)
    assert len(table.columns) == 5 and table.row_count == 7
    assert "y = [3 8 14 20 26 14 5]" in result.summary() and "rooms" not in result.summary()
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["output"] == [3, 8, 14, 20, 26, 14, 5] and len(as_json["steps"]) == 7
    assert as_json["steps"][1]["terms"][0] == {
        "weight_index": [0],
        "weight": 3,
        "input_index": [1],
        "value": 2,
        "product": 6,
        "padded": False,
    }
    assert run_lab("1 2 3", "1 1").steps is None
    capped = run_lab(np.arange(50), [1, 1], explain=True, max_steps=10)
    assert len(capped.steps) == 10 and capped.steps_total == 49
    with pytest.raises(ConfigError, match="both 1-D"):
        run_lab("1 2 3", "1 0; 0 1")
    with pytest.raises(ConfigError, match="not both"):
        run_lab("1 2 3", "1", image="x.png")


def test_load_array_image(tmp_path):
    from PIL import Image

    pixels = np.array([[0, 51, 102], [153, 204, 255]], dtype=np.uint8)  # 2 x 3
    path = tmp_path / "tiny.png"
    Image.fromarray(pixels, mode="L").save(path)
    np.testing.assert_allclose(load_array_image(path), pixels / 255.0)
    assert load_array_image(path, size=(4, 6)).shape == (4, 6)
    # EXIF orientation 6 (rotate 90 degrees) must be applied: H and W swap
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.png"
    Image.fromarray(pixels, mode="L").save(rotated, exif=exif)
    assert load_array_image(rotated).shape == (3, 2)
    result = run_lab(w="1 0; 0 1", image=path, op="correlation")
    assert result.output.shape == (1, 2)
    np.testing.assert_allclose(run_lab(str(path), "[[1]]").output, pixels / 255.0)  # --x photo.png
    with pytest.raises(DataError, match="missing.png"):
        load_array_image(tmp_path / "missing.png")
