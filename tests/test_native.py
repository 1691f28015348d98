"""The C kernels (``l2lbench/fastpath/native``): the same numbers as the PyTorch forms they replace,
used only where they apply, and a clean fallback where they cannot be built."""

from __future__ import annotations

import platform
import warnings

import pytest
import torch

from l2lbench.fastpath.native import build
from l2lbench.fastpath.native import lstm as native
from l2lbench.plugin.base import StepContext
from l2lbench.plugin.learned import bind_fresh, flatten_coordinates
from l2lbench.optimizers.lstm import lstm, lstm_layer
from l2lbench.optimizers.mtl2l import mtl2l

# The kernels' vector code differs by instruction set: besides this CPU's, build them for
# x86's AVX2 and baseline SSE2 levels, whose paths this machine would not take by itself.
INSTRUCTION_SETS = ["native"] + (["x86-64-v3", "x86-64"] if platform.machine() == "x86_64" else [])


@pytest.fixture(params=INSTRUCTION_SETS)
def instruction_set(request, monkeypatch):
    if request.param != "native":
        monkeypatch.setenv(build.MARCH_ENV, request.param)
    build.forget()
    assert build.load("lstm") is not None and build.load("dropout") is not None, build.status()
    yield request.param
    build.forget()


needs_kernel = pytest.mark.skipif(
    build.load("lstm") is None, reason=f"no native LSTM kernel here: {build.unavailable_reason('lstm')}"
)


def _steps(opt, grads_seq, params, *, inputs=None):
    """Meta-test updates (autograd off) over a sequence of gradients; every state on the way."""
    state = opt.init(params)
    history = []
    with torch.no_grad():
        for t, grads in enumerate(grads_seq):
            params, state = opt.update(grads, state, params, StepContext(t, inputs=inputs))
            history.append((flatten_coordinates(params), *state.hidden, *state.cell))
    return history


def _gradients(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Scales from 1 to 1e-6 cross the preprocessing threshold e^-10 in both directions.
    return [{"w": torch.randn(shape, generator=g) * 10.0 ** (-t)} for t in range(steps)]


def _both_forms(opt, grads_seq, params, monkeypatch, **kwargs):
    kernel = _steps(opt, grads_seq, params, **kwargs)
    with monkeypatch.context() as patched:
        patched.setenv(build.SWITCH_ENV, "0")
        assert not native.applies(torch.zeros(1), torch.zeros(1), [torch.zeros(4, 3)])
        reference = _steps(opt, grads_seq, params, **kwargs)
    return kernel, reference


@needs_kernel
# Coordinate counts around the kernel's tile (16 lanes x 4 on AVX-512) and block (8 tiles).
@pytest.mark.parametrize("coordinates", [1, 15, 64, 65, 511, 512, 513, 1100, 3000])
@pytest.mark.parametrize("kwargs", [{}, {"head": "linear", "layers": 3, "hidden": 7}, {"layers": 1}],
                         ids=["authors", "linear-3-layers", "one-layer"])
def test_lstm_kernel_matches_pytorch_form(coordinates, kwargs, monkeypatch, instruction_set):
    opt = bind_fresh(lstm(**kwargs), seed=3)
    params = {"w": torch.randn(coordinates, generator=torch.Generator().manual_seed(9))}
    kernel, reference = _both_forms(opt, _gradients((coordinates,), 6), params, monkeypatch)
    for got_step, want_step in zip(kernel, reference):
        for got, want in zip(got_step, want_step):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert build.status()["lstm"] == "native"


@needs_kernel
def test_mtl2l_kernel_matches_pytorch_form(monkeypatch, instruction_set):
    opt = bind_fresh(mtl2l(context_features=12), seed=2)
    inputs = torch.randn(8, 12, generator=torch.Generator().manual_seed(1))
    params = {"w": torch.randn(40, 17), "b": torch.zeros(40)}
    grads = [{"w": g["w"], "b": g["w"][:, 0]} for g in _gradients((40, 17), 5)]
    kernel, reference = _both_forms(opt, grads, params, monkeypatch, inputs=inputs)
    for got_step, want_step in zip(kernel, reference):
        for got, want in zip(got_step, want_step):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_non_finite_gradients_give_what_the_pytorch_form_gives(monkeypatch, instruction_set):
    opt = bind_fresh(lstm())
    grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1e-30, -3.0] * 20)
    kernel, reference = _both_forms(opt, [{"w": grad}], {"w": torch.zeros(grad.shape)}, monkeypatch)
    for got, want in zip(kernel[0], reference[0]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=True)
    new_params = kernel[0][0].view(20, 6)
    assert torch.isnan(new_params[:, 0]).all() and torch.isfinite(new_params[:, 3:]).all()


@needs_kernel
def test_result_does_not_depend_on_the_thread_count():
    opt = bind_fresh(lstm())
    params = {"w": torch.randn(5000)}
    grads = _gradients((5000,), 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _steps(opt, grads, params)
        torch.set_num_threads(2)
        two = _steps(opt, grads, params)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for x, y in zip(one, two) for a, b in zip(x, y))


@needs_kernel
def test_kernel_applies_only_where_it_can():
    grad, flat, weights = torch.zeros(10), torch.zeros(10), [torch.zeros(80, 22), torch.zeros(4, 21)]
    with torch.no_grad():
        assert native.applies(grad, flat, weights)
        assert not native.applies(grad.double(), flat, weights)  # float32 only
        assert not native.applies(grad, flat, [torch.zeros(4, build_limit() + 1)])  # too wide
        assert not torch.func.vmap(lambda g: torch.tensor(native.applies(g, flat, weights)))(grad[None]).item()
    assert not native.applies(grad, flat, weights)  # autograd on: meta-training's form


def build_limit() -> int:
    return int(build.load("lstm").l2l_lstm_max_inputs())


@needs_kernel
def test_too_wide_a_layer_runs_the_pytorch_form():
    opt = bind_fresh(lstm(hidden=build_limit()), seed=0)  # layer 1: 2 + hidden inputs
    params = {"w": torch.randn(7)}
    (step,) = _steps(opt, _gradients((7,), 1), params)
    assert torch.isfinite(step[0]).all()


def test_without_a_compiler_the_pytorch_form_runs(monkeypatch, tmp_path):
    def no_compiler() -> str:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")

    monkeypatch.delenv(build.SWITCH_ENV, raising=False)

    monkeypatch.setattr(build, "_compiler", no_compiler)
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    build.forget()
    try:
        with pytest.warns(build.NativeKernelWarning, match="no C compiler found"):
            assert build.load("lstm") is None
        assert "no C compiler" in build.status()["lstm"]
        with torch.no_grad():
            assert not native.applies(torch.zeros(3), torch.zeros(3), [torch.zeros(80, 22)])
        opt = bind_fresh(lstm())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once per process, not per step
            (step,) = _steps(opt, _gradients((30,), 1), {"w": torch.zeros(30)})
        assert torch.isfinite(step[0]).all()
    finally:
        build.forget()  # later tests load the real kernel again


def test_a_failing_compiler_is_reported_with_its_message(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_compiler", lambda: "false")  # exits 1, prints nothing
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="false failed: exit 1"):
        build._built("lstm")
    assert list(tmp_path.iterdir()) == []  # no half-built library left behind


@needs_kernel
def test_builds_are_cached_per_source_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    first = build._built("lstm")
    modified = first.stat().st_mtime_ns
    assert build._built("lstm") == first and first.stat().st_mtime_ns == modified  # not rebuilt
    monkeypatch.setattr(build, "_cpu_flags", lambda: "flags : another cpu")
    other = build._built("lstm")
    assert other != first and sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


@needs_kernel
@pytest.mark.parametrize("coordinates,inputs,units", [(1, 2, 20), (77, 3, 5), (513, 2, 20), (3000, 20, 1), (1100, 7, 7)])
@pytest.mark.parametrize("input_needs_grad", [True, False])
def test_training_layer_matches_autograd_of_the_reference(coordinates, inputs, units, input_needs_grad, instruction_set):
    g = torch.Generator().manual_seed(coordinates)
    x = torch.randn(inputs, coordinates, generator=g).requires_grad_(input_needs_grad)
    h, c = (torch.randn(units, coordinates, generator=g).requires_grad_() for _ in range(2))
    weight = (torch.randn(4 * units, inputs + units, generator=g) * 0.3).requires_grad_()
    bias = torch.randn(4 * units, generator=g).requires_grad_()
    dh, dc = torch.randn(units, coordinates, generator=g), torch.randn(units, coordinates, generator=g)
    leaves = [t for t in (x, h, c, weight, bias) if t.requires_grad]
    results = []
    for layer in (lstm_layer, native.lstm_layer):
        assert native.layer_applies(x, h, c, weight, bias)
        h_new, c_new = layer(x, h, c, weight, bias)
        grads = torch.autograd.grad((h_new * dh).sum() + (c_new * dc).sum(), leaves)
        results.append((h_new, c_new, *grads))
    for got, want in zip(*reversed(results)):
        # The weight gradient sums over every coordinate: compare relative to its size.
        torch.testing.assert_close(got, want, atol=1e-5 * max(1.0, want.abs().max().item()), rtol=1e-5)


@needs_kernel
def test_training_layer_is_used_by_meta_training_and_left_to_pytorch_elsewhere():
    x, h, c = torch.zeros(2, 5), torch.zeros(20, 5), torch.zeros(20, 5)
    weight, bias = torch.zeros(80, 22), torch.zeros(80)
    assert native.layer_applies(x, h, c, weight, bias)
    assert not native.layer_applies(x.double(), h.double(), c.double(), weight.double(), bias.double())
    assert not torch.func.vmap(lambda x: torch.tensor(native.layer_applies(x, h, c, weight, bias)))(x[None]).item()
    opt = bind_fresh(lstm())
    params = {"w": torch.randn(40)}
    with torch.enable_grad():
        new, _ = opt.update({"w": torch.randn(40)}, opt.init(params), params, StepContext(0))
    names = {type(node).__name__ for node in _graph_nodes(new["w"].grad_fn)}
    assert "_LayerBackward" in names and "_FusedLSTMLayerBackward" not in names


def _graph_nodes(node, seen=None):
    seen = set() if seen is None else seen
    if node is None or node in seen:
        return seen
    seen.add(node)
    for child, _ in node.next_functions:
        _graph_nodes(child, seen)
    return seen


# Random123's known-answer vectors for Philox4x32-10: (counter, key) -> words.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

needs_dropout_kernel = pytest.mark.skipif(
    build.load("dropout") is None, reason=f"no native dropout kernel here: {build.unavailable_reason('dropout')}"
)


@needs_dropout_kernel
@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_kernel_known_answers(counter, key, expected):
    import ctypes

    out = (ctypes.c_uint32 * 4)()
    build.load("dropout").l2l_philox4x32_10((ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), out)
    assert tuple(out) == expected


def test_philox_pytorch_form_known_answer():
    from l2lbench.fastpath.native.dropout import philox_words

    # Counter 0, key 0: the stream's first word of each of the 4 words' runs of 16.
    assert tuple(philox_words(64, 0)[[0, 16, 32, 48]].tolist()) == PHILOX_KAT[0][2]


@needs_dropout_kernel
@pytest.mark.parametrize("count", [1, 5, 63, 64, 65, 4097, 128 * 784])
def test_dropout_kernel_equals_pytorch_form(count, instruction_set):
    from l2lbench.fastpath.native.dropout import dropout_mask

    draw = lambda dtype: dropout_mask((count,), 0.25, torch.Generator().manual_seed(count), dtype=dtype,  # noqa: E731
                                      device=torch.device("cpu"))
    kernel, pytorch = draw(torch.float32), draw(torch.float64)  # float64: the PyTorch form
    assert torch.equal(kernel > 0, pytorch > 0)
    assert set(kernel.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}


def test_dropout_masks_keep_the_right_share_and_follow_the_generator():
    from l2lbench.fastpath.native.dropout import dropout_mask

    g = torch.Generator().manual_seed(0)
    draw = lambda rate: dropout_mask((200, 500), rate, g, dtype=torch.float32, device=torch.device("cpu"))  # noqa: E731
    first, second = draw(0.1), draw(0.1)
    assert not torch.equal(first, second)  # each mask draws a new key
    for rate in (0.1, 0.25, 0.5):
        kept = (draw(rate) > 0).float().mean().item()
        assert abs(kept - (1 - rate)) < 0.01, (rate, kept)  # 100,000 draws: 5 sigma < 0.01
    again = torch.Generator().manual_seed(0)
    assert torch.equal(dropout_mask((200, 500), 0.1, again, dtype=torch.float32, device=torch.device("cpu")), first)


def test_status_names_the_kernels_asked_for_since_recording_started():
    build.start_recording()
    assert build.status() == {}
    opt, params = bind_fresh(lstm()), {"w": torch.zeros(8)}
    _steps(opt, _gradients((8,), 1), params)
    expected = "native" if build.load("lstm") is not None else build.unavailable_reason("lstm")
    assert build.status() == {"lstm": expected} and ("PyTorch form" in expected or expected == "native")


@needs_dropout_kernel
@pytest.mark.parametrize("count", [1, 63, 65, 128 * 784])
def test_dropout_applied_in_the_kernel_equals_mask_times_input(count, instruction_set):
    from l2lbench.fastpath.native.dropout import dropout, dropout_mask

    x = torch.randn(count, generator=torch.Generator().manual_seed(count))
    x[0] = float("nan")  # NaN * 0 is NaN in both
    fused = dropout(x, 0.1, torch.Generator().manual_seed(7))
    masked = x * dropout_mask(x.shape, 0.1, torch.Generator().manual_seed(7), dtype=torch.float32, device=torch.device("cpu"))
    torch.testing.assert_close(fused, masked, rtol=0, atol=0, equal_nan=True)
    needs_grad = x.clone().requires_grad_()  # the autograd path: mask times input
    out = dropout(needs_grad, 0.1, torch.Generator().manual_seed(7))
    assert out.grad_fn is not None
    torch.testing.assert_close(out.detach(), masked, rtol=0, atol=0, equal_nan=True)


def _refused(monkeypatch, folder, match):
    monkeypatch.setenv(build.CACHE_ENV, str(folder))
    build.forget()
    try:
        with pytest.warns(build.NativeKernelWarning, match=match) as caught:
            assert build.load("lstm") is None
        (warning,) = caught
        assert "\n" not in str(warning.message)  # one line
        assert "refusing" in build.status()["lstm"] or "interface version" in build.status()["lstm"]
    finally:
        build.forget()


@needs_kernel
def test_a_library_planted_in_a_world_writable_cache_folder_is_refused(monkeypatch, tmp_path):
    folder = tmp_path / "shared"
    monkeypatch.setenv(build.CACHE_ENV, str(folder))
    genuine = build._built("lstm")  # where the loader would look
    folder.chmod(0o777)
    planted = genuine.read_bytes()  # anyone may now replace it; its content is never loaded
    genuine.write_bytes(planted)
    _refused(monkeypatch, folder, r"refusing the cache folder .*shared': owned by uid \d+ with mode 777")


@needs_kernel
def test_a_library_writable_by_others_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    genuine = build._built("lstm")
    genuine.chmod(0o666)
    _refused(monkeypatch, tmp_path, r"refusing the library .*lstm-[0-9a-f]+\.so': owned by uid \d+ with mode 666")


@needs_kernel
def test_a_library_of_another_interface_version_is_refused(monkeypatch, tmp_path):
    import subprocess

    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    target = build._built("lstm")
    source = tmp_path / "stale.c"
    source.write_text("int l2l_abi_version(void) { return 99; }\n")
    subprocess.run([build._compiler(), "-shared", "-fPIC", str(source), "-o", str(target)], check=True)
    target.chmod(0o755)
    _refused(monkeypatch, tmp_path, r"the library for 'lstm' has interface version 99, expected 1")


def test_the_cache_key_covers_flags_and_interface_version(monkeypatch, tmp_path):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    keys = []
    monkeypatch.setattr(build.subprocess, "run", lambda *a, **k: type("Done", (), {"stdout": "cc 1", "returncode": 1,
                                                                                    "stderr": "error: stop"})())
    monkeypatch.setattr(build, "_compiler", lambda: "cc")
    for change in (lambda: None, lambda: monkeypatch.setattr(build, "COMMON_FLAGS", build.COMMON_FLAGS + ("-g",)),
                   lambda: monkeypatch.setitem(build.ABI_VERSIONS, "lstm", 2)):
        change()
        with pytest.raises(RuntimeError):
            build._built("lstm")
        keys.append(build._cache_key("lstm"))
    assert len(set(keys)) == 3
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700  # created private
