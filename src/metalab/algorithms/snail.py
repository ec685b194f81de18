"""SNAIL, a simple neural attentive meta-learner (Mishra et al., ICLR 2018).

A black-box learner: the episode is a sequence (`metalab.tasks.sequence`, ``labels="null"``)
of support steps ``[f(x_i), onehot(y_i)]`` followed by one query step ``[f(x), 0]``; the
sequence network (`metalab.nn.snail.SNAILNet`, temporal convolutions and causal attention)
outputs class logits at the query step, and everything (embedding ``f`` included) is trained
end to end by the query cross-entropy.

On the contract: `adapt_task` keeps the support sequence (embeddings and label channels);
`predict` appends *each query independently* after the support, as in the paper, so a query
never sees the other queries (one sequence of ``Ns + 1`` steps per query). The network is
causal, so the support steps' activations are the same in every query's sequence: they are
computed once (`SNAILNet.last_step_after`) and only the query step is run for the queries as
a batch, in training and at meta-test (the same function and gradients as running the
``Nq`` full sequences, `tests/test_snail_prefix.py`).
With ``shuffle_support`` the support steps are put in a random order in meta-training (the
sampler lists them class by class); at meta-test they keep the order they are given.

The embedding's batch norm (Conv4's `TaskBatchNorm`) pools over the support set and over the
query set, as for every metalab few-shot method; the sequence network itself is causal.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, embedding_dimension, support_ways
from metalab.nn.snail import SNAILNet
from metalab.tasks.sequence import one_hot_labels, random_order, with_label_channel
from metalab.validation import check_positive_int


class SNAIL(MetaLearner, name="snail"):
    """SNAIL over an embedding ``model`` (e.g. ``Conv4(out_features=None)``).

    Args:
        model: embedding network, ``[N, ...]`` inputs to ``[N, D]`` features.
        ways: classes per episode (the label channel and the output size).
        shots: support examples per class; with ``ways`` it fixes the sequence length
            ``ways * shots + 1`` that sets the depth of the TC blocks.
        filters, key_sizes, value_sizes: of `SNAILNet` (the paper: 128, (64, 256, 512),
            (32, 128, 256)).
        embedding_dim: D, when the model does not declare ``feature_dim``.
        shuffle_support: random support order in meta-training.
        strategy: ``"loop"`` over tasks (the only one).
    """

    model_role = "embedding"
    adapt_options = ("ways",)

    def __init__(self, model: nn.Module, ways: int, shots: int, filters: int = 128,
                 key_sizes: Sequence[int] = (64, 256, 512),
                 value_sizes: Sequence[int] = (32, 128, 256), embedding_dim: int | None = None,
                 shuffle_support: bool = True, strategy: str = "loop") -> None:
        super().__init__("cross_entropy", strategy)
        if self.strategy != "loop":  # the label channel checks its labels' range per task
            raise ValueError(f"SNAIL supports strategy='loop' only, got {strategy!r}")
        self.ways = check_positive_int("ways", ways)
        self.shots = check_positive_int("shots", shots)
        dim = embedding_dimension(model, embedding_dim, "SNAIL")
        self.model = model
        self.shuffle_support = bool(shuffle_support)
        self.net = SNAILNet(dim + self.ways, self.ways, self.ways * self.shots + 1, filters,
                            tuple(key_sizes), tuple(value_sizes))

    def features(self, x: Tensor) -> Tensor:
        return self.model(x).flatten(1)

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   ways: int | None = None) -> Tensor:
        """The support steps ``[Ns, D + ways]``: embeddings and one-hot labels."""
        ways = support_ways(support_y, ways)
        if ways != self.ways:
            raise ValueError(f"SNAIL was built for ways={self.ways}, got an episode with "
                             f"ways={ways}")
        if training and self.shuffle_support:
            order = random_order(len(support_y), support_y.device)
            support_x, support_y = support_x[order], support_y[order]
        features = self.features(support_x)
        return with_label_channel(features, one_hot_labels(support_y, ways, features.dtype))

    def predict(self, state: Tensor, x: Tensor) -> Tensor:
        """Logits ``[N, ways]``: each query's output after the support sequence."""
        features = self.features(x)
        query_steps = with_label_channel(features, features.new_zeros(len(x), self.ways))
        return self.net.last_step_after(state, query_steps)

    def step_logits(self, steps: Tensor) -> Tensor:
        """The sequence network on ready-made steps ``[B, T, D + ways]``: ``[B, T, ways]``."""
        return self.net(steps)

