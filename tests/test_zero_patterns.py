"""weight_pattern / batchnorm_pattern on hand-built tensors whose zero patterns are known exactly."""

from __future__ import annotations

import warnings

import pytest
import torch

import analyzer.tensors.patterns as patterns
from analyzer.tensors.patterns import (
    NM_PATTERNS,
    UNSTRUCTURED_MIN,
    BatchNormPattern,
    batchnorm_pattern,
    weight_pattern,
)


def _dense(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random weights with no exact zeros (|x| >= 0.1), so every zero is one we put there."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    return torch.where(w.abs() < 0.1, torch.full_like(w, 0.5), w)


def _keep_n_of_m(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Zero all but the n largest-magnitude values in every m consecutive inputs of each row."""
    w = weight.clone()
    groups = w.reshape(w.shape[0], -1, m)
    drop = groups.abs().argsort(-1)[..., : m - n]
    groups.scatter_(-1, drop, 0.0)
    return w


# -- dense -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (32, 64), (8, 4, 1, 1)], ids=["conv3x3", "linear", "conv1x1"])
def test_dense_weight_has_no_pattern(shape: tuple[int, ...]) -> None:
    p = weight_pattern(_dense(*shape))
    assert p.numel == torch.Size(shape).numel()
    assert p.zeros == 0
    assert p.sparsity == 0.0
    assert p.out_channels == shape[0] and p.in_channels == shape[1]
    assert p.zero_out_channels == [] and p.zero_in_channels == []
    assert p.zero_kernels == 0 and p.unstructured_zeros == 0
    assert p.nm == []
    assert p.label == "dense"


def test_few_incidental_zeros_are_still_dense() -> None:
    w = _dense(64, 64)
    flat = w.view(-1)
    count = int(0.01 * flat.numel())  # well below UNSTRUCTURED_MIN
    flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(1))[:count]] = 0
    p = weight_pattern(w)
    assert p.zeros == count
    assert p.unstructured_fraction < UNSTRUCTURED_MIN
    assert p.label == "dense"


# -- structured zeros ------------------------------------------------------------------


def test_zeroed_output_filters_exact_indices() -> None:
    w = _dense(16, 8, 3, 3)
    w[[1, 5, 14]] = 0
    p = weight_pattern(w)
    assert p.zero_out_channels == [1, 5, 14]
    assert p.zero_in_channels == []
    assert p.zeros == 3 * 8 * 9
    assert p.zero_kernels == 0
    assert p.unstructured_zeros == 0
    assert p.kernel_size == 9
    assert p.label == "zeroed-out"


def test_zeroed_output_rows_of_linear() -> None:
    w = _dense(10, 12)
    w[[0, 9]] = 0
    p = weight_pattern(w)
    assert p.zero_out_channels == [0, 9]
    assert p.zero_in_channels == []
    assert p.unstructured_zeros == 0
    assert p.label == "zeroed-out"


def test_zeroed_input_channels() -> None:
    w = _dense(8, 6, 3, 3)
    w[:, [2, 4]] = 0
    p = weight_pattern(w)
    assert p.zero_in_channels == [2, 4]
    assert p.zero_out_channels == []
    assert p.zero_kernels == 0  # kernels inside zeroed input channels are not counted again
    assert p.unstructured_zeros == 0
    assert p.zeros == 8 * 2 * 9
    assert p.label == "zeroed-in"


def test_zeroed_rows_and_columns_counted_once() -> None:
    w = _dense(8, 6, 3, 3)
    w[[0, 3]] = 0
    w[:, 5] = 0
    p = weight_pattern(w)
    assert p.zero_out_channels == [0, 3]
    assert p.zero_in_channels == [5]
    assert p.zeros == (2 * 6 + 8 * 1 - 2 * 1) * 9
    assert p.zero_kernels == 0
    assert p.unstructured_zeros == 0
    assert p.label == "zeroed-out+zeroed-in"


def test_zeroed_kernels() -> None:
    w = _dense(8, 6, 3, 3)
    kernels = [(0, 0), (1, 3), (2, 5), (4, 1), (7, 2), (7, 4)]
    for o, i in kernels:
        w[o, i] = 0
    p = weight_pattern(w)
    assert p.zero_out_channels == [] and p.zero_in_channels == []
    assert p.zero_kernels == len(kernels)
    assert p.zeros == len(kernels) * 9
    assert p.unstructured_zeros == 0
    assert p.label == "kernels"


def test_zeroed_kernels_inside_zeroed_filters_are_not_extra_kernels() -> None:
    w = _dense(8, 6, 3, 3)
    w[2] = 0  # a zeroed filter: its 6 kernels are zero but belong to the channel
    w[5, 1] = 0  # one kernel outside: 9 of 63 zeros, under the kernel share
    p = weight_pattern(w)
    assert p.zero_out_channels == [2]
    assert p.zero_kernels == 1
    assert p.unstructured_zeros == 0
    assert p.label == "zeroed-out"
    for o in (0, 1, 3, 4, 6):  # six kernels outside: 54 of 108 zeros
        w[o, 0] = 0
    p = weight_pattern(w)
    assert p.zero_out_channels == [2]
    assert p.zero_kernels == 6
    assert p.label == "zeroed-out+kernels"


def test_random_half_sparsity_is_not_labelled_kernels() -> None:
    g = torch.Generator().manual_seed(3)
    w = _dense(64, 32, 3, 3)
    mask = torch.rand(w.shape, generator=g) < 0.5
    w[mask] = 0
    p = weight_pattern(w)
    # a few 9-element kernels are all zero by chance (about 1 in 512): not a pattern
    assert p.zero_kernels < 0.01 * 64 * 32
    assert "kernels" not in p.label
    assert p.label == "unstructured"
    assert p.sparsity == pytest.approx(0.5, abs=0.01)


# -- unstructured ----------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("shape", [(128, 96), (32, 16, 3, 3)], ids=["linear", "conv"])
def test_unstructured_fraction_matches_amount(shape: tuple[int, ...], amount: float) -> None:
    w = _dense(*shape)
    flat = w.view(-1)
    count = round(amount * flat.numel())
    flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(2))[:count]] = 0
    p = weight_pattern(w)
    assert p.zeros == count
    assert p.sparsity == pytest.approx(amount, abs=1e-3)
    assert p.unstructured_fraction == pytest.approx(amount, abs=0.01)
    # every zero is accounted for once: chance all-zero kernels or scattered
    assert p.unstructured_zeros + p.zero_kernels * p.kernel_size == p.zeros
    assert p.zero_out_channels == [] and p.zero_in_channels == []
    assert p.nm == []
    assert p.label == "unstructured"


# -- N:M -------------------------------------------------------------------------------


def test_two_of_four_along_linear_inputs() -> None:
    w = _keep_n_of_m(_dense(16, 32), 2, 4)
    p = weight_pattern(w)
    assert p.zeros == w.numel() // 2
    assert "2:4" in p.nm and "4:8" in p.nm
    assert "1:4" not in p.nm
    assert p.nm == ["2:4", "4:8"]  # strictest first
    assert p.label == "2:4"


def test_one_of_four() -> None:
    w = _keep_n_of_m(_dense(8, 16), 1, 4)
    p = weight_pattern(w)
    assert p.zeros == w.numel() * 3 // 4
    assert p.nm == [f"{n}:{m}" for n, m in NM_PATTERNS]
    assert p.label == "1:4"


def test_two_of_four_along_flattened_conv_inputs() -> None:
    # (out, in, kh, kw) flattens to (out, in*kh*kw): groups of 4 consecutive values of that row
    w = _dense(8, 4, 2, 2)
    w = _keep_n_of_m(w.reshape(8, 16), 2, 4).reshape(8, 4, 2, 2)
    p = weight_pattern(w)
    assert "2:4" in p.nm
    assert p.label == "2:4"


def test_two_of_four_on_three_rows_of_four_is_not_nm() -> None:
    w = _dense(4, 16)
    w[:3] = _keep_n_of_m(w[:3], 2, 4)
    p = weight_pattern(w)
    assert p.zeros == 3 * 8
    assert p.nm == []
    assert p.label not in {"1:4", "2:4", "4:8"}
    assert p.label == "unstructured"


def test_four_of_eight_that_is_not_two_of_four() -> None:
    # half the inputs zero, at most 4 non-zeros in every 8, but 3 in the first aligned group of 4
    row = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    w = row.repeat(4, 2)
    p = weight_pattern(w)
    assert p.nm == ["4:8"]
    assert p.label == "4:8"


# -- whole zero, tolerance -------------------------------------------------------------


def test_whole_zero_layer() -> None:
    p = weight_pattern(torch.zeros(6, 4, 3, 3))
    assert p.zeros == p.numel == 6 * 4 * 9
    assert p.sparsity == 1.0
    assert p.zero_out_channels == list(range(6))
    assert p.zero_in_channels == list(range(4))
    assert p.label == "zero"


def test_zero_tol_counts_near_zero_values_only_with_tolerance() -> None:
    w = _dense(8, 4, 3, 3)
    w[3] = 1e-7
    w[6] = -5e-8
    exact = weight_pattern(w)
    assert exact.zeros == 0
    assert exact.zero_out_channels == []

    tolerant = weight_pattern(w, zero_tol=1e-6)
    assert tolerant.zeros == 2 * 4 * 9
    assert tolerant.zero_out_channels == [3, 6]
    assert tolerant.label == "zeroed-out"

    too_small = weight_pattern(w, zero_tol=1e-8)
    assert too_small.zero_out_channels == []
    assert too_small.zeros == 0


def test_zero_tol_near_zero_nm() -> None:
    w = _keep_n_of_m(_dense(8, 16), 2, 4)
    w[w == 0] = 1e-9
    assert weight_pattern(w).nm == []
    assert weight_pattern(w, zero_tol=1e-6).label == "2:4"


def test_weight_of_one_dimension_is_rejected() -> None:
    with pytest.raises(ValueError):
        weight_pattern(torch.ones(8))


def test_quantized_weight_is_dequantized() -> None:
    w = _dense(8, 4, 3, 3)
    w[[2, 7]] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized creation functions are deprecated
        q = torch.quantize_per_tensor(w, scale=0.01, zero_point=0, dtype=torch.qint8)
    p = weight_pattern(q)
    assert p.zero_out_channels == [2, 7]


# -- chunking --------------------------------------------------------------------------


def _structured_mix() -> torch.Tensor:
    w = _dense(37, 6, 3, 3, seed=5)
    w[[0, 3, 17, 36]] = 0
    w[:, 2] = 0
    w[5, 4] = 0
    w[20, 0] = 0
    w[30, 5] = 0
    g = torch.Generator().manual_seed(6)
    w[torch.rand(w.shape, generator=g) < 0.2] = 0
    return w


@pytest.mark.parametrize("chunk", [1, 54, 54 * 2 + 7, 54 * 10])
def test_chunked_matches_single_chunk(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    w = _structured_mix()
    whole = weight_pattern(w)
    assert w.numel() < patterns._CHUNK_ELEMENTS  # one chunk by default
    assert whole.zero_out_channels == [0, 3, 17, 36]
    assert whole.zero_in_channels == [2]
    monkeypatch.setattr(patterns, "_CHUNK_ELEMENTS", chunk)
    assert w.numel() > chunk
    chunked = weight_pattern(w)
    assert chunked == whole


@pytest.mark.parametrize("bad_row", [0, 17, 39])
def test_chunked_nm_sees_a_violation_in_any_chunk(monkeypatch: pytest.MonkeyPatch, bad_row: int) -> None:
    w = _keep_n_of_m(_dense(40, 64), 2, 4)
    w[bad_row] = _dense(1, 64, seed=9)[0]  # one dense row breaks 2:4 and 4:8
    whole = weight_pattern(w)
    assert whole.nm == []
    monkeypatch.setattr(patterns, "_CHUNK_ELEMENTS", 64 * 3)
    chunked = weight_pattern(w)
    assert chunked.nm == []
    assert chunked == whole


def test_chunked_nm_holds_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _keep_n_of_m(_dense(40, 64), 2, 4)
    whole = weight_pattern(w)
    monkeypatch.setattr(patterns, "_CHUNK_ELEMENTS", 64 * 3)
    chunked = weight_pattern(w)
    assert chunked == whole
    assert chunked.nm == ["2:4", "4:8"]
    assert chunked.label == "2:4"


def test_chunked_zero_tol(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _dense(20, 8, 3, 3)
    w[[4, 11, 19]] = 1e-8
    whole = weight_pattern(w, zero_tol=1e-6)
    monkeypatch.setattr(patterns, "_CHUNK_ELEMENTS", 72 * 3)
    chunked = weight_pattern(w, zero_tol=1e-6)
    assert chunked == whole
    assert chunked.zero_out_channels == [4, 11, 19]


# -- BatchNorm -------------------------------------------------------------------------


def test_batchnorm_dense() -> None:
    p = batchnorm_pattern(torch.ones(16), torch.zeros(16))
    assert p == BatchNormPattern(channels=16, dead=[], constant=[])
    assert p.label == "dense"


def test_batchnorm_dead_vs_constant() -> None:
    scale = torch.ones(16)
    shift = torch.full((16,), 0.2)
    scale[[1, 4, 9]] = 0
    shift[[1, 4, 9]] = 0  # scale and shift 0: dead
    scale[[2, 12]] = 0  # scale 0 only: constant
    p = batchnorm_pattern(scale, shift)
    assert p.channels == 16
    assert p.dead == [1, 4, 9]
    assert p.constant == [2, 12]
    assert p.label == "dead+constant"


def test_batchnorm_only_constant() -> None:
    scale = torch.ones(8)
    scale[3] = 0
    p = batchnorm_pattern(scale, torch.full((8,), 0.5))
    assert p.dead == [] and p.constant == [3]
    assert p.label == "constant"


def test_batchnorm_zero_shift_alone_is_not_dead() -> None:
    # shift 0 with a live scale passes the normalised input: nothing silenced
    p = batchnorm_pattern(torch.ones(8), torch.zeros(8))
    assert p.dead == [] and p.constant == []


def test_batchnorm_without_shift_is_dead() -> None:
    scale = torch.ones(8)
    scale[[0, 7]] = 0
    p = batchnorm_pattern(scale, None)
    assert p.dead == [0, 7] and p.constant == []
    assert p.label == "dead"


def test_batchnorm_zero_tol() -> None:
    scale = torch.ones(8)
    shift = torch.full((8,), 0.3)
    scale[[1, 2]] = 1e-9
    shift[1] = -1e-9
    assert batchnorm_pattern(scale, shift).label == "dense"
    p = batchnorm_pattern(scale, shift, zero_tol=1e-6)
    assert p.dead == [1] and p.constant == [2]

