"""Meta Networks (Munkhdalai & Yu, ICML 2017): fast weights generated from loss gradients.

A base learner ``b`` (slow weights ``W``) and a dynamic representation ``u`` (slow weights
``Q``) are both convolutional classifiers. Adapting to a support set ``{(x'_i, y'_i)}``:

1. task-level fast weights of ``u`` (Algorithm 1, lines 2-5): the support set is cut into
   T chunks; each chunk's classification loss gives a gradient ``grad_Q L_t``, and an LSTM
   ``d`` run over the T gradients, coordinate by coordinate, outputs ``Q* = d(G, {grad_t})``;
2. example-level fast weights of ``b`` (lines 6-10): for every support example,
   ``W*_i = m(Z, grad_W L_i)`` with ``m`` an MLP applied coordinate by coordinate; the
   memory keeps ``M = {W*_i}`` and the keys ``R = {r'_i = u(Q, Q*, x'_i)}``;
3. a query ``x`` (lines 11-14) reads the memory by attention,
   ``a = softmax_i(cos(R_i, u(Q, Q*, x)))``, ``W* = a^T M``, and is classified by
   ``b(W, W*, x)``.

Gradients enter ``m`` and ``d`` preprocessed by `log_and_sign` and as inputs only (no
gradient flows back through them, as in the released code). Every fast-parameterised layer
is layer-augmented (section 3.3): ``h = a(W h) + a(W* h)``; the base learner's logits are
``fc2(h) + W*_fc2 h``. The fast weights cover every convolution weight and both fully
connected weights of each network (the released "MetaNetFull" model), biases and batch-norm
parameters stay slow.

metalab's models: the base learner is the config's model (a `Conv4` body, then ``fc1``
``D -> D`` with ReLU, then the model's own head ``D -> ways``); ``u`` is a freshly
initialised copy of the same network whose ``fc1`` output is the key. Batch norm follows
metalab's convention (statistics of the current batch, per task: the support set, or the
queries of a task), where the released code passes one example at a time: here the support
set goes through each network once, and each example's (or chunk's) loss is differentiated
on its own. ``fast_layers="linear"`` keeps the convolutions slow (a cheaper variant).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner
from metalab.nn.fast_weights import (
    CoordinateLSTM,
    CoordinateMLP,
    augmented_block,
    log_and_sign,
    mixed_linear,
)
from metalab.validation import check_choice, check_positive_int


def conv_blocks(body: nn.Sequential) -> list[nn.Sequential]:
    """The blocks ``[Conv2d, ...]`` of ``body``; its other modules must hold no parameters."""
    blocks = []
    for module in body:
        if isinstance(module, nn.Sequential) and isinstance(module[0], nn.Conv2d):
            blocks.append(module)
        elif any(True for _ in module.parameters()):
            raise ValueError(f"metanet needs a model whose body is convolution blocks "
                             f"[Conv2d, ...] and parameter-free layers (conv4), got a "
                             f"{type(module).__name__} with parameters")
    return blocks


def _reset(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        if sub is not module and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return module


class SlowNetwork(nn.Module):
    """A classifier ``body -> relu(fc1) -> head`` whose convolution and linear weights can be
    layer-augmented with fast weights."""

    def __init__(self, model: nn.Module, augment_convs: bool = True) -> None:
        super().__init__()
        self.augment_convs = augment_convs
        body, head = getattr(model, "body", None), getattr(model, "head", None)
        if not isinstance(body, nn.Sequential) or not isinstance(head, nn.Linear):
            raise ValueError("metanet needs a model with a Sequential `body` and a Linear "
                             "`head` (conv4 with out_features set)")
        self.body, self.head = body, head
        blocks = conv_blocks(body)
        self.blocks = blocks if augment_convs else []
        self.fc1 = nn.Linear(head.in_features, head.in_features, bias=False)

    def fast_parameterised(self) -> list[Tensor]:
        """The weights that get fast counterparts: the convolutions' (``augment_convs``),
        ``fc1``'s and the head's."""
        return [block[0].weight for block in self.blocks] + [self.fc1.weight, self.head.weight]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.fc1(self.body(x))))

    def augmented_features(self, x: Tensor, fast: list[Tensor], mix: Tensor | None) -> Tensor:
        """The body's output with every convolution block layer-augmented (when
        ``augment_convs``; else the slow body)."""
        fast_convs = iter(fast[:len(self.blocks)])
        for module in self.body:
            if any(module is block for block in self.blocks):
                x = augmented_block(module, x, next(fast_convs), mix)
            else:
                x = module(x)
        return x

    def augmented_key(self, x: Tensor, fast: list[Tensor]) -> Tensor:
        """``r = u(Q, Q*, x)``: the layer-augmented ``fc1`` output (no nonlinearity)."""
        h = self.augmented_features(x, fast, None)
        return self.fc1(h) + mixed_linear(h, fast[-2], None)

    def augmented_logits(self, x: Tensor, fast: list[Tensor], mix: Tensor) -> Tensor:
        """``b(W, W*, x)`` with query q's fast weights ``sum_i mix[q, i] W*_i``."""
        h = self.augmented_features(x, fast, mix)
        h = F.relu(self.fc1(h)) + F.relu(mixed_linear(h, fast[-2], mix))
        return self.head(h) + mixed_linear(h, fast[-1], mix)


def chunk_gradients(network: SlowNetwork, x: Tensor, y: Tensor, chunks: list[Tensor]
                    ) -> list[list[Tensor]]:
    """For each chunk of indices, ``grad_W L_chunk`` of the fast-parameterised weights, as
    inputs (no graph). One forward pass of the whole support set (batch norm over it, as
    everywhere in metalab); ``L_chunk`` is the mean cross-entropy of the chunk's examples."""
    with torch.enable_grad():
        losses = F.cross_entropy(network(x), y, reduction="none")
        weights = network.fast_parameterised()
        return [list(torch.autograd.grad(losses[chunk].mean(), weights, retain_graph=True))
                for chunk in chunks]


class MetaNet(MetaLearner, name="metanet"):
    """Meta Networks (module doc) around a classifier ``model`` (e.g. `Conv4`).

    Args:
        model: the base learner's network, with a ``body`` of convolution blocks and a
            linear ``head`` (``D -> ways``); the representation network is a fresh copy.
        generator_hidden: hidden units of the weight generators ``m`` and ``d`` (20).
        key_chunks: T, the number of support chunks whose gradients ``d`` reads in turn
            (5 in the released code; at most the support size).
        preprocess_p: the ``p`` of the gradient preprocessing (7 in the released code).
        fast_layers: ``"all"`` (every convolution and linear weight, the released
            "MetaNetFull") or ``"linear"`` (only ``fc1`` and the head: the convolutions stay
            slow; about 25x fewer generated weights on Conv4, much cheaper on CPU).
        strategy: ``"loop"`` over tasks (the only one: gradients per example are taken
            with `torch.autograd.grad`).
    """

    def __init__(self, model: nn.Module, generator_hidden: int = 20, key_chunks: int = 5,
                 preprocess_p: float = 7.0, fast_layers: str = "all",
                 strategy: str = "loop") -> None:
        super().__init__("cross_entropy", strategy)
        if strategy != "loop":
            raise ValueError(f"metanet supports strategy='loop' only, got {strategy!r}")
        self.key_chunks = check_positive_int("key_chunks", key_chunks)
        if not float(preprocess_p) > 0:
            raise ValueError(f"preprocess_p must be > 0, got {preprocess_p!r}")
        self.preprocess_p = float(preprocess_p)
        augment_convs = check_choice("fast_layers", fast_layers, ("all", "linear")) == "all"
        self.base = SlowNetwork(model, augment_convs)
        self.representation = SlowNetwork(_reset(copy.deepcopy(model)), augment_convs)
        _reset(self.representation.fc1)
        hidden = check_positive_int("generator_hidden", generator_hidden)
        self.example_conv, self.example_fc = CoordinateMLP(hidden), CoordinateMLP(hidden)
        self.task_conv, self.task_fc = CoordinateLSTM(hidden), CoordinateLSTM(hidden)

    def _preprocess(self, gradient: Tensor) -> Tensor:
        return log_and_sign(gradient, self.preprocess_p)

    def example_fast_weights(self, support_x: Tensor, support_y: Tensor) -> list[Tensor]:
        """``M``: for each weight, ``[N, *shape]`` with ``W*_i = m(Z, grad_W L_i)``."""
        examples = list(torch.arange(len(support_x), device=support_x.device)[:, None])
        per_example = chunk_gradients(self.base, support_x, support_y, examples)
        stacked = [torch.stack(grads) for grads in zip(*per_example, strict=True)]
        convs = len(self.base.blocks)
        return [(self.example_conv if k < convs else self.example_fc)(self._preprocess(g))
                for k, g in enumerate(stacked)]

    def task_fast_weights(self, support_x: Tensor, support_y: Tensor) -> list[Tensor]:
        """``Q* = d(G, {grad_Q L_t})`` over ``key_chunks`` chunks of the support set."""
        indices = torch.arange(len(support_x), device=support_x.device)
        chunks = indices.tensor_split(min(self.key_chunks, len(support_x)))
        per_chunk = chunk_gradients(self.representation, support_x, support_y, list(chunks))
        convs = len(self.representation.blocks)
        fast = []
        for k, grads in enumerate(zip(*per_chunk, strict=True)):
            sequence = self._preprocess(torch.stack(grads).flatten(1))
            generator = self.task_conv if k < convs else self.task_fc
            fast.append(generator(sequence).view_as(grads[0]))
        return fast

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool
                   ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """``(R, M, Q*)``: the support keys, the example-level and the task-level fast
        weights."""
        if support_y is None:
            raise ValueError("metanet adapts to a labelled support set; support_y is None")
        task_fast = self.task_fast_weights(support_x, support_y)
        keys = self.representation.augmented_key(support_x, task_fast)
        return keys, self.example_fast_weights(support_x, support_y), task_fast

    def predict(self, state: tuple[Tensor, list[Tensor], list[Tensor]], x: Tensor) -> Tensor:
        keys, memory, task_fast = state
        query_keys = self.representation.augmented_key(x, task_fast)
        attention = torch.softmax(F.cosine_similarity(query_keys[:, None], keys[None], dim=-1),
                                  dim=1)
        return self.base.augmented_logits(x, memory, attention)
