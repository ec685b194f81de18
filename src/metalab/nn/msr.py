"""Meta-learning symmetries by reparametrization (MSR; Zhou, Knowles, Finn, ICLR 2021).

An MSR layer stores its weight as a symmetry matrix times filter parameters (sec. 4, eq. 3):

    vec(W) = U v,        U in R^{m x k} (the sharing pattern), v in R^k (the filter),

with ``vec`` the row-major flattening ``W.reshape(-1)``. The inner loop adapts only ``v``
to a task; ``U`` (and everything else) is learned in the outer loop, so the sharing pattern
that the tasks have in common is meta-learned. With ``U`` the 0/1 matrix that copies a
filter to every position (`conv1d_sharing_matrix`) an `MSRLinear` *is* a convolution; with
the matrix that copies every group-transformed filter (`MSRConv2d.group_lifting`) an
`MSRConv2d` is a group convolution (the paper's Prop. 1). The bias is reparametrized the
same way, ``b = U_b v_b`` (``bias_U`` outer-only, ``bias_v`` adapted).

With `metalab.algorithms.MAML`, MSR is MAML with ``adapt=inner_parameter_names(model)``.
This module also holds the baselines of the synthetic experiments (a locally connected
layer for MAML-LC), builders of the models MAML-FC / LC / Conv and MSR-FC / Conv, and the
small convolutional classifier of the augmented few-shot experiment.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.nn.norm import TaskBatchNorm
from metalab.tasks.symmetry import GROUPS, check_group, group_filter_bank
from metalab.validation import check_choice, check_positive_int

# Parameter names that are symmetry matrices (outer loop only) in every MSR layer.
SYMMETRY_PARAMETERS = ("U", "bias_U", "U_out", "U_in", "U_space")
# Filter parameters of MSR-FC per rank of the 1-D data, as in the official experiments.
MSR_FC_FILTER_PARAMS = {1: 3, 2: 6, 5: 30}


# -- sharing matrices ------------------------------------------------------------------------
def sharing_matrix(linear_map: Callable[[Tensor], Tensor], num_params: int,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """The matrix ``U`` with ``linear_map(v).reshape(-1) == U @ v`` for every ``v`` in R^k.

    Column ``m`` is the image of the ``m``-th unit vector, so ``linear_map`` must be linear.
    """
    basis = torch.eye(check_positive_int("num_params", num_params), dtype=dtype)
    return torch.stack([linear_map(e).reshape(-1) for e in basis], dim=1)


def conv1d_sharing_matrix(in_channels: int, out_channels: int, kernel_size: int,
                          input_length: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``U`` of a valid, stride-1, bias-free 1-D convolution (cross-correlation, as F.conv1d).

    The dense matrix ``W [out_channels * L_out, in_channels * L]`` of the convolution
    (``L_out = L - kernel_size + 1``; channel-major flattening of inputs and outputs) is
    ``W[(o, p), (c, p + j)] = kernel[o, c, j]``, so ``vec(W) = U vec(kernel)`` with ``U`` of
    shape ``[out_channels * L_out * in_channels * L, out_channels * in_channels * kernel_size]``.
    """
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("kernel_size", kernel_size)):
        check_positive_int(name, value)
    check_positive_int("input_length", input_length, kernel_size)
    out_length = input_length - kernel_size + 1
    o, p, c, j = torch.meshgrid(torch.arange(out_channels), torch.arange(out_length),
                                torch.arange(in_channels), torch.arange(kernel_size),
                                indexing="ij")
    rows = ((o * out_length + p) * in_channels + c) * input_length + p + j
    columns = (o * in_channels + c) * kernel_size + j
    U = torch.zeros(out_channels * out_length * in_channels * input_length,
                    out_channels * in_channels * kernel_size, dtype=dtype)
    U[rows.reshape(-1), columns.reshape(-1)] = 1
    return U


def _channel_sharing_matrix(out_channels: int, positions: int, dtype: torch.dtype) -> Tensor:
    """``U_b [out_channels * positions, out_channels]``: one bias per channel at every position."""
    return torch.eye(out_channels, dtype=dtype).repeat_interleave(positions, dim=0)


# -- MSR layers ------------------------------------------------------------------------------
class _Reparametrized(nn.Module):
    """Holds ``U [m, k]``, ``v [k]`` and optionally ``bias_U [n, k_b]``, ``bias_v [k_b]``."""

    def _init_weight(self, size: int, num_filter_params: int) -> None:
        self.U = nn.Parameter(torch.empty(size, num_filter_params))
        self.v = nn.Parameter(torch.empty(num_filter_params))

    def _init_bias(self, bias: bool, size: int, num_bias_params: int | None) -> None:
        if not bias:
            self.register_parameter("bias_U", None)
            self.register_parameter("bias_v", None)
            return
        k = size if num_bias_params is None else check_positive_int("num_bias_params",
                                                                    num_bias_params)
        self.bias_U = nn.Parameter(torch.eye(size, k) if k == size
                                   else 0.01 * torch.randn(size, k))
        self.bias_v = nn.Parameter(torch.empty(k))

    @property
    def num_filter_params(self) -> int:
        return self.v.shape[0]

    @property
    def bias(self) -> Tensor | None:
        """``b = U_b v_b`` (``None`` without bias)."""
        return None if self.bias_v is None else self.bias_U @ self.bias_v

    def set_sharing(self, U: Tensor, bias_U: Tensor | None = None) -> None:
        """Replace the symmetry matrices (shapes are checked); ``v`` is kept if its size fits."""
        if U.dim() != 2 or U.shape[0] != self.U.shape[0]:
            raise ValueError(f"U must have shape [{self.U.shape[0]}, k], got {tuple(U.shape)}")
        with torch.no_grad():
            if U.shape[1] != self.num_filter_params:
                self.v = nn.Parameter(torch.zeros(U.shape[1], dtype=self.v.dtype))
            self.U = nn.Parameter(U.to(self.U.dtype).clone())
            if bias_U is None:
                return
            if self.bias_U is None or bias_U.dim() != 2 or bias_U.shape[0] != self.bias_U.shape[0]:
                expected = "no bias_U (bias=False)" if self.bias_U is None else (
                    f"shape [{self.bias_U.shape[0]}, k_b]")
                raise ValueError(f"bias_U must have {expected}, got {tuple(bias_U.shape)}")
            if bias_U.shape[1] != self.bias_v.shape[0]:
                self.bias_v = nn.Parameter(torch.zeros(bias_U.shape[1], dtype=self.bias_v.dtype))
            self.bias_U = nn.Parameter(bias_U.to(self.bias_U.dtype).clone())


class MSRLinear(_Reparametrized):
    """A fully connected layer ``y = x W^T + b`` with ``vec(W) = U v`` and ``b = U_b v_b``.

    The MSR-FC layer of the paper. Initialisation follows the official code:
    ``U ~ N(0, 0.01^2)``, ``v ~ N(0, (1 / out_features)^2)``; ``bias_U`` starts as the
    identity (a free bias) when ``num_bias_params`` is ``None`` (= ``out_features``) and
    ``bias_v ~ U(-1/sqrt(in), 1/sqrt(in))`` as `nn.Linear`.

    Args:
        in_features, out_features: sizes of ``x`` and ``y`` (last dimension).
        num_filter_params: ``k``, the number of adapted weight parameters.
        bias: add ``b = U_b v_b``.
        num_bias_params: ``k_b`` (default ``out_features``).
    """

    def __init__(self, in_features: int, out_features: int, num_filter_params: int,
                 bias: bool = False, num_bias_params: int | None = None) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self._init_weight(in_features * out_features,
                          check_positive_int("num_filter_params", num_filter_params))
        self._init_bias(bias, out_features, num_bias_params)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.U.normal_(0.0, 0.01)
            self.v.normal_(0.0, 1.0 / self.out_features)
            if self.bias_v is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.bias_v.uniform_(-bound, bound)

    @classmethod
    def from_conv1d(cls, in_channels: int, out_channels: int, kernel_size: int,
                    input_length: int, bias: bool = False) -> MSRLinear:
        """An MSR-FC layer whose ``U`` (and ``U_b``) make it exactly a valid 1-D convolution.

        It maps flattened inputs ``[..., in_channels * input_length]`` to flattened outputs
        ``[..., out_channels * L_out]``; ``v`` is the kernel ``[out, in, k]`` flattened and
        ``bias_v`` one bias per output channel.
        """
        U = conv1d_sharing_matrix(in_channels, out_channels, kernel_size, input_length)
        out_length = input_length - kernel_size + 1
        layer = cls(in_channels * input_length, out_channels * out_length, U.shape[1],
                    bias=bias, num_bias_params=out_channels if bias else None)
        bias_U = _channel_sharing_matrix(out_channels, out_length, U.dtype) if bias else None
        layer.set_sharing(U, bias_U)
        with torch.no_grad():  # the default init of nn.Conv1d
            bound = 1.0 / math.sqrt(in_channels * kernel_size)
            layer.v.uniform_(-bound, bound)
            if bias:
                layer.bias_v.uniform_(-bound, bound)
        return layer

    @property
    def weight(self) -> Tensor:
        """``W [out_features, in_features]`` with ``vec(W) = U v``."""
        return (self.U @ self.v).view(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_filter_params={self.num_filter_params}, bias={self.bias_v is not None}")


class MSRConv2d(_Reparametrized):
    """A 2-D convolution whose kernel is ``vec(K) = U v`` (``K [out, in, k, k]``): MSR-Conv.

    With ``num_filter_params=None`` (``= out * in * k * k``) ``U`` starts as the identity and
    ``v`` as `nn.Conv2d`'s default kernel, i.e. a plain convolution (as the official
    ``ShareConv2d``, whose sharing matrix is a Kronecker product of identity-initialised
    factors; here ``U`` is one unfactored matrix). A smaller ``k`` starts from
    ``U ~ N(0, 0.01^2)`` and ``v ~ N(0, (1 / out)^2)``. `group_lifting` builds the exact ``U``
    of a C4/D4 lifting group convolution. The bias is ``b = U_b v_b`` (``[out_channels]``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 num_filter_params: int | None = None, bias: bool = False, stride: int = 1,
                 padding: int = 0, num_bias_params: int | None = None) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.stride = check_positive_int("stride", stride)
        self.padding = check_positive_int("padding", padding, 0)
        size = out_channels * in_channels * kernel_size * kernel_size
        k = size if num_filter_params is None else check_positive_int("num_filter_params",
                                                                      num_filter_params)
        self._init_weight(size, k)
        self._init_bias(bias, out_channels, num_bias_params)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size ** 2
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            if self.U.shape[0] == self.U.shape[1]:
                self.U.copy_(torch.eye(self.U.shape[0]))
                self.v.uniform_(-bound, bound)
            else:
                self.U.normal_(0.0, 0.01)
                self.v.normal_(0.0, 1.0 / self.out_channels)
            if self.bias_v is not None:
                self.bias_v.uniform_(-bound, bound)

    @classmethod
    def group_lifting(cls, group: str, in_channels: int, filters: int, kernel_size: int = 3,
                      bias: bool = False, **conv_kwargs) -> MSRConv2d:
        """A lifting group convolution over ``group`` (``"C4"`` or ``"D4"``) as an MSR-Conv.

        ``v`` holds ``filters`` base kernels ``[filters, in_channels, k, k]``; output channel
        ``f * |G| + g`` convolves with ``T_g`` of base kernel ``f``
        (`metalab.tasks.symmetry.group_filter_bank`); with bias, one bias per base filter.
        """
        order = len(GROUPS[check_group(group)])
        shape = (filters, in_channels, kernel_size, kernel_size)
        layer = cls(in_channels, filters * order, kernel_size, math.prod(shape), bias=bias,
                    num_bias_params=filters if bias else None, **conv_kwargs)
        U = sharing_matrix(lambda v: group_filter_bank(v.view(shape), group),
                           math.prod(shape))
        bias_U = _channel_sharing_matrix(filters, order, U.dtype) if bias else None
        layer.set_sharing(U, bias_U)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
            layer.v.uniform_(-bound, bound)
        return layer

    @property
    def weight(self) -> Tensor:
        """The kernel ``[out_channels, in_channels, k, k]`` with ``vec(K) = U v``."""
        k = self.kernel_size
        return (self.U @ self.v).view(self.out_channels, self.in_channels, k, k)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"num_filter_params={self.num_filter_params}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias_v is not None}")


class KroneckerMSRConv2d(_Reparametrized):
    """MSR-Conv with a Kronecker-factored symmetry matrix ``U = U_out (x) U_in (x) U_space``.

    ``vec(K) = (U_out (x) U_in (x) U_space) vec(v)`` for the kernel ``K [out, in, k, k]`` and
    filter parameters ``v [out, in, k * k]``: ``U_out [out, out]`` mixes output channels,
    ``U_in [in, in]`` input channels and ``U_space [k^2, k^2]`` kernel positions. The three
    factors start as identities (a plain convolution), as in the official ``ShareConv2d``.
    It has ``out^2 + in^2 + k^4`` symmetry parameters instead of ``(out * in * k^2)^2``, so
    deep networks stay cheap, at the price of coupling channels and positions only through
    the product (``U`` returns the full matrix, for checks). Bias: ``b = U_b v_b``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 bias: bool = False, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.stride = check_positive_int("stride", stride)
        self.padding = check_positive_int("padding", padding, 0)
        area = kernel_size * kernel_size
        self.U_out = nn.Parameter(torch.eye(out_channels))
        self.U_in = nn.Parameter(torch.eye(in_channels))
        self.U_space = nn.Parameter(torch.eye(area))
        self.v = nn.Parameter(torch.empty(out_channels, in_channels, area))
        self._init_bias(bias, out_channels, None)
        bound = 1.0 / math.sqrt(in_channels * area)
        with torch.no_grad():
            self.v.uniform_(-bound, bound)
            if self.bias_v is not None:
                self.bias_v.uniform_(-bound, bound)

    @property
    def num_filter_params(self) -> int:
        return self.v.numel()

    @property
    def U(self) -> Tensor:
        """The full symmetry matrix ``U_out (x) U_in (x) U_space`` (row-major ``vec``)."""
        return torch.kron(self.U_out, torch.kron(self.U_in, self.U_space))

    @property
    def weight(self) -> Tensor:
        k = self.kernel_size
        kernel = self.v @ self.U_space.T  # one factor at a time: no (out*in*k^2)^2 product
        kernel = torch.einsum("cd,bde->bce", self.U_in, kernel)
        kernel = torch.einsum("ab,bce->ace", self.U_out, kernel)
        return kernel.reshape(self.out_channels, self.in_channels, k, k)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias_v is not None}")


def inner_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters the inner loop adapts: all but the MSR symmetry matrices.

    Pass it as ``MAML(model, adapt=inner_parameter_names(model))``; the official code's rule
    too (every parameter adapts except the "warp" ones).
    """
    names = []
    for module_name, module in model.named_modules():
        symmetry = SYMMETRY_PARAMETERS if isinstance(module, _Reparametrized) else ()
        for name, _ in module.named_parameters(recurse=False):
            if name not in symmetry:
                names.append(f"{module_name}.{name}" if module_name else name)
    return names


# -- the MAML-LC baseline ----------------------------------------------------------------------
class LocallyConnected1d(nn.Module):
    """A 1-D locally connected layer: a convolution with a different filter at every position.

    ``y[n, o, p] = sum_{c, j} weight[o, c, p, j] x[n, c, p * stride + j] (+ bias[o, p])`` for
    ``x [N, in_channels, L]`` and ``output_size`` positions (``L >= (output_size - 1) * stride
    + kernel_size``). Initialised as `nn.Conv1d` (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
    ``fan_in = in_channels * kernel_size``). The MAML-LC baseline of the paper.
    """

    def __init__(self, in_channels: int, out_channels: int, output_size: int,
                 kernel_size: int = 3, stride: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.output_size = check_positive_int("output_size", output_size)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.stride = check_positive_int("stride", stride)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, output_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels, output_size)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        needed = (self.output_size - 1) * self.stride + self.kernel_size
        if x.dim() != 3 or x.shape[1] != self.in_channels or x.shape[2] < needed:
            raise ValueError(f"LocallyConnected1d expects x of shape [N, {self.in_channels}, "
                             f">= {needed}], got {tuple(x.shape)}")
        windows = x.unfold(2, self.kernel_size, self.stride)[:, :, : self.output_size]
        out = torch.einsum("ncpj,ocpj->nop", windows, self.weight)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, output_size={self.output_size}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"bias={self.bias is not None}")


# -- the models of the synthetic experiments ---------------------------------------------------
TRANSLATION_MODELS = ("maml-fc", "maml-lc", "maml-conv", "msr-fc")
ROTATION_MODELS = ("maml-conv", "msr-conv")


def translation_model(kind: str, rank: int = 1, num_filter_params: int | None = None,
                      input_length: int = 70, kernel_size: int = 3) -> nn.Module:
    """A one-layer, bias-free model for `TranslationEquivariantTasks` (``[N, 1, L]`` in/out).

    ``kind``: ``"maml-fc"`` (`nn.Linear` over the last dimension), ``"maml-lc"``
    (`LocallyConnected1d`), ``"maml-conv"`` (`nn.Conv1d`), ``"msr-fc"`` (`MSRLinear` with
    ``num_filter_params`` or the official count for ``rank``: 3, 6, 30 for ranks 1, 2, 5).
    """
    output_length = check_positive_int("input_length", input_length, kernel_size) - (
        kernel_size - 1)
    if kind == "maml-fc":
        return nn.Sequential(nn.Linear(input_length, output_length, bias=False))
    if kind == "maml-lc":
        return nn.Sequential(LocallyConnected1d(1, 1, output_length, kernel_size))
    if kind == "maml-conv":
        return nn.Sequential(nn.Conv1d(1, 1, kernel_size, bias=False))
    if kind == "msr-fc":
        if num_filter_params is None:
            if rank not in MSR_FC_FILTER_PARAMS:
                raise ValueError(f"rank must be one of {sorted(MSR_FC_FILTER_PARAMS)} when "
                                 f"num_filter_params is not given, got {rank!r}")
            num_filter_params = MSR_FC_FILTER_PARAMS[rank]
        return nn.Sequential(MSRLinear(input_length, output_length, num_filter_params))
    raise ValueError(f"kind must be one of {TRANSLATION_MODELS}, got {kind!r}")


def rotation_model(kind: str, out_channels: int, kernel_size: int = 3,
                   num_filter_params: int | None = None) -> nn.Module:
    """A one-layer, bias-free model for `RotationEquivariantTasks` (``[N, 1, H, W]`` in).

    ``kind``: ``"maml-conv"`` (`nn.Conv2d`) or ``"msr-conv"`` (`MSRConv2d`, by default with
    ``U`` initialised to the identity over the full kernel).
    """
    if kind == "maml-conv":
        return nn.Sequential(nn.Conv2d(1, out_channels, kernel_size, bias=False))
    if kind == "msr-conv":
        return nn.Sequential(MSRConv2d(1, out_channels, kernel_size, num_filter_params))
    raise ValueError(f"kind must be one of {ROTATION_MODELS}, got {kind!r}")


CLASSIFIER_MODELS = ("maml-conv", "msr-conv")


def conv_classifier(kind: str, ways: int, hidden: int = 16, image_size: int = 28,
                    in_channels: int = 1, blocks: int = 4) -> nn.Module:
    """``blocks`` x [3x3 conv, `TaskBatchNorm`, ReLU, 2x2 max-pool], flatten, linear head.

    The Conv4 layout of MAML's few-shot experiments; with ``kind="msr-conv"`` every
    convolution is a `KroneckerMSRConv2d` (the factored MSR-Conv, as the official code's
    augmented experiments) whose factors start as identities, so the two models start as
    the same function class and MSR then meta-learns the sharing of each kernel.
    """
    check_choice("kind", kind, CLASSIFIER_MODELS)
    side = check_positive_int("image_size", image_size)
    layers: list[nn.Module] = []
    width = check_positive_int("in_channels", in_channels)
    for _ in range(check_positive_int("blocks", blocks)):
        conv = (nn.Conv2d(width, hidden, 3, padding=1) if kind == "maml-conv"
                else KroneckerMSRConv2d(width, hidden, 3, padding=1, bias=True))
        layers += [conv, TaskBatchNorm(hidden), nn.ReLU(), nn.MaxPool2d(2)]
        width, side = hidden, side // 2
    if side < 1:
        raise ValueError(f"image_size={image_size} is too small for {blocks} 2x2 poolings")
    layers += [nn.Flatten(), nn.Linear(hidden * side * side, check_positive_int("ways", ways))]
    return nn.Sequential(*layers)
