"""Memory-augmented neural networks (Santoro et al., ICML 2016) and their LSTM baseline.

A black-box learner over an episode as a sequence with *offset labels*
(`metalab.tasks.sequence`, ``labels="offset"``): step ``t`` shows ``[f(x_t), onehot(y_{t-1})]``
and the network (`metalab.nn.mann.MANNNet`: LSTM controller, cosine-read memory written by
least-recently-used access) predicts ``y_t`` before the label is revealed. The steps come in
a random order (`random_order`; the sampler lists them class by class), so a class's first
presentation is a guess and later ones can be recalled.

Training (``sequence_loss="all"``, the paper's protocol): the whole episode, support and query
examples together, is one shuffled sequence and the loss is the cross-entropy averaged over
every step (the metric: accuracy over every step). Each task is embedded on its own (its
batch norm statistics), then the recurrences of all tasks run as one batch.
``sequence_loss="query"`` trains on the contract's query loss instead.

On the contract: `adapt_task` runs the shuffled support sequence and keeps the final state
(controller, memory, usage, last read) and the last support label (the offset label the next
step sees); `predict` runs *each query independently* as one more step from that state.
`episode_logits` is the public per-step API (`benchmarks/mann_presentations.py` uses it for
the accuracy per presentation number). ``mann-lstm`` is the same learner without memory.

The embedding's batch norm (Conv4's `TaskBatchNorm`) pools over the examples embedded
together (the episode in training, the support and the query set at meta-test), as for
every metalab few-shot method; the recurrent network itself is causal.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metalab.algorithms.base import MetaLearner, embedding_dimension, support_ways
from metalab.nn.mann import MANNNet, MemoryState
from metalab.tasks import TaskBatch
from metalab.tasks.sequence import (
    episode_as_sequence,
    offset_label_inputs,
    one_hot_labels,
    random_order,
    with_label_channel,
)
from metalab.validation import check_choice, check_positive_int

SEQUENCE_LOSSES = ("all", "query")


class MANN(MetaLearner, name="mann"):
    """MANN over an embedding ``model`` (e.g. ``Conv4(out_features=None)``).

    Args:
        model: embedding network, ``[N, ...]`` inputs to ``[N, D]`` features.
        ways: classes per episode (label channel and output size).
        controller_size, slots, size, gamma: of `MANNNet` (paper: 200, 128, 40, 0.95).
        memory: False for the LSTM baseline (``mann-lstm``).
        read_strength: ``None`` (Santoro's read) or the scale ``s`` of a learned key
            strength on the cosine read (`MANNNet`; NTM-style, not in the paper).
        sequence_loss: ``"all"`` steps of the shuffled episode (Santoro) or ``"query"``.
        embedding_dim: D, when the model does not declare ``feature_dim``.
        shuffle: put the steps in a random order (False keeps the sampler's order).
        strategy: ``"loop"`` over tasks.
    """

    model_role = "embedding"
    adapt_options = ("ways",)

    def __init__(self, model: nn.Module, ways: int, controller_size: int = 200,
                 slots: int = 128, size: int = 40, gamma: float = 0.95, memory: bool = True,
                 sequence_loss: str = "all", embedding_dim: int | None = None,
                 shuffle: bool = True, strategy: str = "loop",
                 read_strength: float | None = None) -> None:
        super().__init__("cross_entropy", strategy)
        self.ways = check_positive_int("ways", ways)
        self.sequence_loss = check_choice("sequence_loss", sequence_loss, SEQUENCE_LOSSES)
        dim = embedding_dimension(model, embedding_dim, type(self).__name__)
        self.model = model
        self.shuffle = bool(shuffle)
        self.net = MANNNet(dim + self.ways, self.ways, controller_size, slots, size, gamma,
                           memory, read_strength)

    def features(self, x: Tensor) -> Tensor:
        return self.model(x).flatten(1)

    def _check_ways(self, ways: int) -> None:
        if ways != self.ways:
            raise ValueError(f"{type(self).__name__} was built for ways={self.ways}, got an "
                             f"episode with ways={ways}")

    def _order(self, length: int, device: torch.device) -> Tensor:
        return random_order(length, device) if self.shuffle else torch.arange(length, device=device)

    def episode_logits(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Logits ``[n, ways]`` at every step of the sequence ``inputs [n, ...]`` in the given
        order, step ``t`` seeing the offset label ``targets[t - 1]``."""
        features = self.features(inputs)
        steps = with_label_channel(features, offset_label_inputs(targets, self.ways,
                                                                  features.dtype))
        return self.net(steps)[0]

    # -- the contract --------------------------------------------------------------------
    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   ways: int | None = None) -> tuple[MemoryState, Tensor]:
        """The state after the shuffled support sequence, and the last support label."""
        self._check_ways(support_ways(support_y, ways))
        order = self._order(len(support_y), support_y.device)
        support_x, support_y = support_x[order], support_y[order]
        features = self.features(support_x)
        steps = with_label_channel(features, offset_label_inputs(support_y, self.ways,
                                                                  features.dtype))
        _, state = self.net(steps)
        return state, one_hot_labels(support_y[-1], self.ways, features.dtype)

    def predict(self, state: tuple[MemoryState, Tensor], x: Tensor) -> Tensor:
        """Logits ``[N, ways]``: each query as the next step after the support."""
        memory_state, last_label = state
        features = self.features(x)
        n = len(x)
        steps = with_label_channel(features, last_label.expand(n, self.ways))
        batched = MemoryState(*(v.expand(n, *v.shape) for v in memory_state))
        return self.net.step(steps, batched)[0]

    # -- Santoro's training loss: every step of the episode ------------------------------
    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        if self.sequence_loss == "query":
            return super().training_task_losses(batch)
        self._check_ways(self.task_options(batch)["ways"])
        sequences = [episode_as_sequence(*task, self.ways, "offset",
                                         self._order(task.support_y.shape[0]
                                                     + task.query_y.shape[0],
                                                     batch.support_y.device))
                     for task in (batch[i] for i in range(len(batch)))]
        features = torch.stack([self.features(s.inputs) for s in sequences])
        targets = torch.stack([s.targets for s in sequences])
        labels = offset_label_inputs(targets.T, self.ways, features.dtype).transpose(0, 1)
        logits = self.net(with_label_channel(features, labels))[0]  # tasks run as a batch
        losses, metric = zip(*(self.score(lg, y) for lg, y in zip(logits, targets,
                                                                    strict=True)), strict=True)
        return torch.stack(losses), {self.metric_name: torch.stack(metric).detach()}


class MANNLSTM(MANN, name="mann-lstm"):
    """Santoro's LSTM baseline: `MANN`'s controller and protocol without the memory."""

    def __init__(self, model: nn.Module, ways: int, controller_size: int = 200,
                 sequence_loss: str = "all", embedding_dim: int | None = None,
                 shuffle: bool = True, strategy: str = "loop") -> None:
        super().__init__(model, ways, controller_size, memory=False,
                         sequence_loss=sequence_loss, embedding_dim=embedding_dim,
                         shuffle=shuffle, strategy=strategy)
