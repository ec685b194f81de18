"""Pretrained-embedding baselines: Baseline, Baseline++ (Chen et al., ICLR 2019) and RFS
(Tian et al., ECCV 2020).

Training is ordinary classification over every training class (no episodes): an embedding
``f_theta`` and a classifier over the ``num_classes`` training classes minimise the mean
cross-entropy of plain labelled batches (``data.train_batch_size``; the task source gives
one task whose query set is the batch). The classifier is

- ``train_head: linear`` (Baseline, RFS): ``s_k(x) = w_k . f(x) + b_k``;
- ``train_head: cosine`` (Baseline++): ``s_k(x) = scale * cos(f(x), w_k)``.

At meta-test the training classifier is dropped and a new head is fit on the support set's
embeddings (`metalab.algorithms.support_heads`): ``linear`` (Baseline), ``cosine``
(Baseline++), ``logistic`` (RFS: logistic regression on L2-normalised features),
``prototypes``, or ``finetune`` (the whole network and a linear head, by gradient steps on
the support set).

RFS's self-distillation (born-again networks): ``distill_from`` names a trained run of this
method over the same training classes, the teacher ``t``; the student (a fresh network of
the same config) minimises, per batch of ``n`` images,

    L = (1 - a) CE(s(x), y) + a T^2 (1/n) sum_i KL(softmax(t(x_i)/T) || softmax(s(x_i)/T))

with ``a = distill_weight`` and ``T = distill_temperature`` (Tian et al. 2020: their
released commands weight both terms 0.5, with temperature 4; the T^2 keeps the soft term's
gradients on the scale of the hard one, Hinton et al. 2015). Repeating it with the student
as the next teacher gives the paper's later generations. The teacher is attached for
training only (`attach_teacher`; `metalab.train.run.make_trainer` loads it), is never
trained and is not saved in the student's checkpoints: a distilled run is evaluated
without it (resuming its training needs it again).

Batch norm: with ``norm: batch`` in the model (ordinary batch norm; this method does not
adapt at training time) the running statistics serve meta-test; per-task batch norm works
too, with the support's and then the query's statistics (transductive).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms import support_heads as heads
from metalab.algorithms.base import MetaLearner, support_ways
from metalab.tasks import TaskBatch
from metalab.validation import check_choice, check_positive_int, check_real

TRAIN_HEADS = ("linear", "cosine")
DEFAULT_TEST_HEAD = {"linear": "linear", "cosine": "cosine"}


def feature_dim_of(model: nn.Module) -> int:
    """The embedding size a model declares (``feature_dim``)."""
    dim = getattr(model, "feature_dim", None)
    if not isinstance(dim, int):
        raise ValueError(f"the embedding model {type(model).__name__} must declare its "
                         f"feature_dim (an int) to size the training classifier")
    return dim


class PretrainedEmbedding(MetaLearner, name="pretrained"):
    """A classifier-pretrained embedding with a head fit on each support set at meta-test.

    Args:
        model: the embedding (``out_features: null``: the builder asks for no head).
        num_classes: training classes (completed from the data); ``None``: no training
            classifier (an embedding trained elsewhere, evaluated with a support head).
        train_head: ``linear`` (Baseline, RFS) or ``cosine`` (Baseline++).
        scale: the cosine classifier's scale (training and the ``cosine`` support head).
        test_head: the head fit at meta-test (default: the training head's kind).
        head_steps: L-BFGS iterations of a support head's fit.
        weight_decay: L2 weight of the ``linear`` support head.
        logistic_c: inverse L2 strength of the ``logistic`` head (scikit-learn's ``C``).
        finetune_steps / finetune_lr: SGD (momentum 0.9) steps on the support set for the
            ``finetune`` head, which adapts every parameter of the network and a linear head.
        distill_from: a trained run of this method (its directory) to distil from, or None.
        distill_weight / distill_temperature: ``a`` and ``T`` of the distillation loss.
    """

    model_role = "embedding"
    adapt_options = ("ways", "head")
    #: Options the builder completes from the training data (its number of classes).
    options_sized_by_data = ("num_classes",)

    def __init__(self, model: nn.Module, num_classes: int | None = None,
                 train_head: str = "linear", scale: float = 10.0, test_head: str | None = None,
                 head_steps: int = 100, weight_decay: float = 1e-3, logistic_c: float = 1.0,
                 finetune_steps: int = 100, finetune_lr: float = 0.01,
                 distill_from: str | None = None, distill_weight: float = 0.5,
                 distill_temperature: float = 4.0) -> None:
        super().__init__("cross_entropy")
        self.model = model
        self.train_head = check_choice("train_head", train_head, TRAIN_HEADS)
        self.test_head = check_choice("test_head", test_head or DEFAULT_TEST_HEAD[train_head],
                                      heads.HEADS)
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)
        self.head_steps = check_positive_int("head_steps", head_steps)
        self.weight_decay = float(weight_decay)
        self.logistic_c = float(logistic_c)
        self.finetune_steps = check_positive_int("finetune_steps", finetune_steps)
        self.finetune_lr = float(finetune_lr)
        if distill_from is not None and not isinstance(distill_from, str):
            raise ValueError(f"distill_from must be the directory of a trained run (a "
                             f"string), got {distill_from!r}")
        self.distill_from = distill_from
        self.distill_weight = check_real("distill_weight", distill_weight)
        if self.distill_weight > 1:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight!r}")
        self.distill_temperature = check_real("distill_temperature", distill_temperature,
                                              inclusive=False)
        # not a submodule: the teacher is neither trained nor saved with the student
        object.__setattr__(self, "teacher", None)
        self.classifier = None
        if num_classes is not None:
            self.classifier = nn.Linear(feature_dim_of(model),
                                        check_positive_int("num_classes", num_classes),
                                        bias=train_head == "linear")

    def embed(self, x: Tensor) -> Tensor:
        return self.model(x).flatten(1)

    # -- pretraining: classification over every training class ----------------------------
    def classify(self, features: Tensor) -> Tensor:
        """The training classifier's logits (linear, or ``scale * cos``)."""
        if self.classifier is None:
            raise ValueError("this learner has no training classifier (num_classes=None)")
        if self.train_head == "cosine":
            return heads.cosine_logits(features, self.classifier.weight, self.scale)
        return self.classifier(features)

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.support_x.shape[1] != 0:
            raise ValueError("the pretrained-embedding method trains on plain labelled "
                             "batches, not episodes: set data.train_batch_size")
        if self.distill_from is not None and self.teacher is None:
            raise ValueError(f"distill_from={self.distill_from!r}: no teacher is attached "
                             f"(metalab train loads it; call attach_teacher(load_run(...)))")
        logits = [self.classify(self.embed(x)) for x in batch.query_x]
        losses, metrics = self.stacked_scores(zip(logits, batch.query_y, strict=True))
        if self.teacher is None:
            return losses, metrics
        soft = torch.stack([self.distillation_loss(s, self.teacher_logits(x).to(s.dtype))
                            for s, x in zip(logits, batch.query_x, strict=True)])
        return (1 - self.distill_weight) * losses + self.distill_weight * soft, metrics

    # -- self-distillation -----------------------------------------------------------------
    def attach_teacher(self, teacher: MetaLearner) -> None:
        """Distil from ``teacher``: a trained `PretrainedEmbedding` over the same classes."""
        if not isinstance(teacher, PretrainedEmbedding) or teacher.classifier is None:
            raise ValueError(f"distill_from={self.distill_from!r} must be a run of the "
                             f"pretrained method with a training classifier, got "
                             f"{type(teacher).__name__}")
        if self.classifier is None or \
                teacher.classifier.out_features != self.classifier.out_features:
            ours = None if self.classifier is None else self.classifier.out_features
            raise ValueError(f"distill_from={self.distill_from!r} classifies "
                             f"{teacher.classifier.out_features} training classes; this "
                             f"learner {ours}: distil over the same training data")
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher.eval())

    def teacher_logits(self, x: Tensor) -> Tensor:
        """The teacher's training-classifier logits for ``x`` (no gradient; eval mode)."""
        reference = next(self.teacher.parameters())
        if reference.device != x.device:  # the student was moved after the teacher attached
            self.teacher.to(x.device)
        with torch.no_grad():
            return self.teacher.classify(self.teacher.embed(x.to(reference.dtype)))

    def distillation_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        """``T^2`` times the batch mean of ``KL(softmax(teacher/T) || softmax(student/T))``."""
        t = self.distill_temperature
        return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t

    # -- meta-test: a new head on the support set ------------------------------------------
    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   ways: int | None = None, head: str | None = None) -> dict[str, Any]:
        """The head fit on the support set's embeddings, ``{"head": name, tensors ...}``."""
        head = check_choice("head", head or self.test_head, heads.HEADS)
        ways = support_ways(support_y, ways)
        if head == "finetune":
            return {"head": head, **self._finetune(support_x, support_y, ways)}
        with torch.no_grad():
            features = self.embed(support_x)
        if head == "linear":
            fitted = heads.fit_linear(features, support_y, ways, weight_decay=self.weight_decay,
                                      steps=self.head_steps)
        elif head == "cosine":
            fitted = heads.fit_cosine(features, support_y, ways, scale=self.scale,
                                      steps=self.head_steps)
        elif head == "logistic":
            fitted = heads.fit_logistic(features, support_y, ways, c=self.logistic_c,
                                        steps=self.head_steps)
        else:
            fitted = heads.fit_prototypes(features, support_y, ways)
        return {"head": head, **fitted}

    def predict(self, state: dict[str, Any], x: Tensor) -> Tensor:
        head = state["head"]
        if head == "finetune":
            features = functional_call(self.model, state["params"], (x,)).flatten(1)
            return heads.linear_scores(state, features)
        features = self.embed(x)
        scores = {"linear": heads.linear_scores, "cosine": heads.cosine_scores,
                  "logistic": heads.logistic_scores, "prototypes": heads.prototype_scores}
        return scores[head](state, features)

    def _finetune(self, support_x: Tensor, support_y: Tensor, ways: int) -> dict[str, Any]:
        """Every parameter and a zero-initialised linear head, by SGD on the support set."""
        params = {n: p.detach().clone().requires_grad_(True)
                  for n, p in self.model.named_parameters()}
        with torch.no_grad():
            dim = self.embed(support_x[:1]).shape[1]
        weight = support_x.new_zeros(ways, dim).requires_grad_(True)
        bias = support_x.new_zeros(ways).requires_grad_(True)
        optimizer = torch.optim.SGD([*params.values(), weight, bias], lr=self.finetune_lr,
                                    momentum=0.9)
        with torch.enable_grad():
            for _ in range(self.finetune_steps):
                optimizer.zero_grad()
                features = functional_call(self.model, params, (support_x,)).flatten(1)
                F.cross_entropy(features @ weight.T + bias, support_y).backward()
                optimizer.step()
        return {"params": {n: p.detach() for n, p in params.items()},
                "weight": weight.detach(), "bias": bias.detach()}


def with_support_head(learner: MetaLearner, head: str) -> MetaLearner:
    """``learner``'s embedding with ``head`` fit on each support set at meta-test.

    The embedding is the model of an embedding method (ProtoNet, Matching ...), or the
    ``body`` of a model with a body and a head (MAML's Conv4). A learner that takes a
    ``head`` option itself is returned as it is (pass the option to its `adapt`).
    """
    check_choice("head", head, heads.HEADS)
    if "head" in learner.adapt_options:
        return learner
    model = getattr(learner, "model", None)
    if model is not None and learner.model_role != "embedding":
        model = getattr(model, "body", None)
    if model is None:
        raise ValueError(f"{type(learner).__name__} has no embedding (a model of an "
                         f"embedding method, or a model with a body) to fit a {head} head on")
    return PretrainedEmbedding(model, num_classes=None, test_head=head).eval()
