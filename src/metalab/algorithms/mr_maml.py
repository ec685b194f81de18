"""Meta-regularized MAML: MR-MAML(W) and MR-MAML(A) (Yin et al., "Meta-Learning without
Memorization", ICLR 2020).

Both split the model into a ``body`` (an encoder of the input, meta-learned in the outer
loop only) and a ``head`` (adapted by MAML's inner loop on the encoded support set), the
split of the authors' code: meta-regularization acts on the meta-parameters that are *not*
used to adapt, so that the information needed to solve a task has to come through the
adaptation on the support set rather than be memorized in the encoder.

- MR-MAML(W), meta-regularization on weights (paper, section 4; Algorithm 2 of the appendix):
  a mean-field Gaussian ``q(theta; mu, sigma)`` over the body's weights, a reparametrized
  sample ``theta = mu + sigma * eps`` per task (the authors' Bayesian layers draw once per
  call, i.e. separately for the support and the query batch), and
  ``beta * KL(q || N(0, I))`` added once per meta-batch to the mean query loss. sigma is
  ``exp(s)`` or, as the authors' TFP layers, ``floor + softplus(rho)``.
- MR-MAML(A), meta-regularization on activations (paper, section 4): the body outputs
  the mean and (softplus) scale of a Gaussian code ``z ~ N(mu(x), sigma(x)^2)`` of every
  input, the head adapts on the codes, and each task's query loss gets
  ``beta * KL(q(z | x*) || N(0, I))`` averaged over the query points and code dimensions
  (an information bottleneck on the query-to-prediction path).

The inner loop is MAML's: a task's adaptation draws the encoder (one weight sample for
W), encodes the support set and runs `MAML.adapt_task` on the codes; `predict` encodes
the query with the same draw. These classes only encode and add the regularizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalab.algorithms.maml import MAML
from metalab.nn.backbones import BodyHead  # noqa: F401  (the model these methods take)
from metalab.tasks import TaskBatch
from metalab.validation import check_choice

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # TFP's floor on sigma in float32


def gaussian_kl_to_standard(mean: Tensor, log_sigma: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean, sigma^2) || N(0, 1))`` for ``sigma = exp(log_sigma)``.

    ``0.5 * (sigma^2 + mean^2 - 1) - log_sigma`` (the closed form of the Gaussian KL).
    """
    return 0.5 * (torch.exp(2 * log_sigma) + mean.square() - 1.0) - log_sigma


def _check_body_head(model: nn.Module, method: str) -> None:
    for part in ("body", "head"):
        if not isinstance(getattr(model, part, None), nn.Module):
            raise TypeError(f"{method} needs a model with a '{part}' submodule (the "
                            f"meta-regularized encoder and the adapted head, e.g. BodyHead); "
                            f"{type(model).__name__} has none")


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    return beta


def _flat(x: Tensor) -> Tensor:
    """Merge the task and example dimensions: ``[T, N, ...] -> [T * N, ...]``."""
    return x.reshape(-1, *x.shape[2:])


class _EncodedMAML(MAML):
    """MAML whose inner loop adapts ``model.head`` on inputs encoded by ``model.body``.

    Subclasses implement `_encode_batch` (the stochastic encoder). ``adapt`` names parameter
    prefixes of the head (default: all of it).
    """

    method = "MR-MAML"

    def __init__(self, model: nn.Module, beta: float, eval_sample: bool, **kwargs) -> None:
        _check_body_head(model, self.method)
        super().__init__(model, **kwargs)
        self.beta = _check_beta(beta)
        self.eval_sample = bool(eval_sample)

    @property
    def inner_module(self) -> nn.Module:
        return self.model.head

    def _encode_batch(self, batch: TaskBatch, sample: bool
                      ) -> tuple[TaskBatch, dict[str, Tensor]]:
        """The batch with x replaced by codes, and per-task terms ``{name: [T]}``."""
        raise NotImplementedError

    def _encoder(self, sample: bool):
        """A function ``x [N, ...] -> codes [N, d]`` for one task (weights drawn once)."""
        raise NotImplementedError

    def adapt_task(self, support_x: Tensor, support_y: Tensor, *, training: bool,
                   inner_steps: int | None = None):
        """One encoder draw, and the head adapted on the support codes with it."""
        encode = self._encoder(sample=training or self.eval_sample)
        return encode, super().adapt_task(encode(support_x), support_y, training=training,
                                          inner_steps=inner_steps)

    def predict(self, state, x: Tensor) -> Tensor:
        encode, adapted = state
        return super().predict(adapted, encode(x))

    def training_task_losses(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The batch encoded at once (`_encode_batch`), then MAML's inner loop per task,
        plus each task's term of the encoder (MR-MAML(A)'s KL)."""
        encoded, terms = self._encode_batch(batch, sample=True)
        losses, metrics = self.map_adapt_predict(encoded, super().adapt_task, super().predict)
        for name, values in terms.items():
            losses = losses + self.beta * values
            metrics[name] = values.detach()
        return losses, metrics


SIGMA_TRANSFORMS = ("exp", "softplus")


class MRMAMLW(_EncodedMAML, name="mr-maml-w"):
    """MR-MAML(W): a Gaussian over the encoder's weights, ``beta * KL(q || N(0, I))``.

    The body's weight tensors (``dim >= 2``, and its biases with ``stochastic_biases=True``)
    become ``mu + sigma * eps``; ``mu`` is the body's own parameter and ``sigma`` comes from a
    parameter of the same shape:

    - ``sigma_transform="exp"`` (default): ``sigma = sigma_floor + exp(s)``, ``s`` in
      ``log_sigmas``, initialised to ``init_log_sigma``;
    - ``sigma_transform="softplus"``: ``sigma = sigma_floor + softplus(rho)``, ``rho`` in
      ``rhos``, initialised to ``init_rho``: the parametrization of TensorFlow
      Probability's ``default_mean_field_normal_fn``, which the authors' code uses.

    The two behave differently in training: with ``exp`` the KL's pull ``-log sigma`` has
    gradient ``-beta`` in ``s`` and sigma grows under Adam; the authors' sinusoid notebook
    starts ``rho ~ N(-50, 0.1)`` with TFP's floor ``sigma_floor = float32 eps = 1.19e-7``,
    where ``d sigma / d rho = sigmoid(rho) ~ 2e-22``: sigma stays at the floor for good, the
    weights are in effect deterministic, and the KL acts as the constant
    ``-log(1.19e-7) - 1/2`` per weight plus the weight decay ``beta / 2 * ||mu||^2``
    (``MRMAMLW(..., sigma_transform="softplus", init_rho=-50.0, sigma_floor=FLOAT32_EPS)``).

    A fresh ``eps`` is drawn for every task of every meta-batch (from torch's global RNG,
    which the Trainer seeds and checkpoints); the support and the query of a task share it.

    The KL term does not depend on the tasks, so it is added once per meta-batch by
    the trainer through the `MetaLearner.regularizer` hook; under ``meta_backward``'s task
    chunks, each chunk adds it with the chunk's weight, and the weights sum to one.

    Args:
        model: a module with ``body`` (the stochastic encoder) and ``head`` (adapted).
        beta: weight of the KL (the authors' notebook uses 5e-5 on the sinusoid, their pose
            code 1e-3; the paper tunes it over 1e-6 .. 1).
        init_log_sigma: initial ``log sigma`` of every stochastic weight (``exp`` only).
        stochastic_biases: also put the Gaussian on the body's biases (the authors' layers
            keep biases deterministic).
        eval_sample: at meta-test, draw one weight sample per task (the authors'
            Bayesian layers always sample); ``False`` uses the mean ``mu``.
        sigma_transform: ``"exp"`` or ``"softplus"`` (see above).
        init_rho: initial ``rho`` of every stochastic weight (``softplus`` only; the
            authors: about -50 on the sinusoid, -20 for pose).
        sigma_floor: a constant added to sigma (TFP adds the dtype's machine epsilon,
            `FLOAT32_EPS` in float32); ``0`` by default.
        **kwargs: `MAML` arguments (inner_lr, inner_steps, eval_inner_steps, first_order,
            loss, strategy, adapt = head parameter prefixes, checkpoint_steps).
    """

    method = "MRMAMLW"

    def __init__(self, model: nn.Module, beta: float = 5e-5, init_log_sigma: float = -6.0,
                 stochastic_biases: bool = False, eval_sample: bool = True,
                 sigma_transform: str = "exp", init_rho: float = -50.0,
                 sigma_floor: float = 0.0, **kwargs) -> None:
        super().__init__(model, beta, eval_sample, **kwargs)
        check_choice("sigma_transform", sigma_transform, SIGMA_TRANSFORMS)
        sigma_floor = float(sigma_floor)
        if not sigma_floor >= 0:
            raise ValueError(f"sigma_floor must be >= 0, got {sigma_floor!r}")
        self.sigma_transform = sigma_transform
        self.sigma_floor = sigma_floor
        body = dict(model.body.named_parameters())
        self.stochastic_names = [n for n, p in body.items() if stochastic_biases or p.dim() > 1]
        if not self.stochastic_names:
            raise ValueError("model.body has no weight tensor to make stochastic; pass "
                             "stochastic_biases=True or give the body a layer")
        init = float(init_log_sigma if sigma_transform == "exp" else init_rho)
        raw = nn.ParameterDict({
            self._key(n): nn.Parameter(torch.full_like(body[n].detach(), init))
            for n in self.stochastic_names
        })
        if sigma_transform == "exp":  # the attribute names keep old checkpoints loadable
            self.log_sigmas = raw
        else:
            self.rhos = raw

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    @property
    def sigma_parameters(self) -> nn.ParameterDict:
        """The unconstrained parameters of sigma (``log_sigmas`` or ``rhos``)."""
        return self.log_sigmas if self.sigma_transform == "exp" else self.rhos

    def _sigma_and_log(self, name: str) -> tuple[Tensor, Tensor]:
        raw = self.sigma_parameters[self._key(name)]
        if self.sigma_transform == "exp" and self.sigma_floor == 0.0:
            return torch.exp(raw), raw
        base = torch.exp(raw) if self.sigma_transform == "exp" else F.softplus(raw)
        sigma = base + self.sigma_floor
        return sigma, torch.log(sigma)

    def sigmas(self) -> dict[str, Tensor]:
        """``{body parameter name: sigma}`` of the stochastic weights."""
        return {n: self._sigma_and_log(n)[0] for n in self.stochastic_names}

    def kl(self) -> Tensor:
        """``KL(q(theta; mu, sigma) || N(0, I))`` summed over every stochastic weight."""
        body = dict(self.model.body.named_parameters())
        return sum(gaussian_kl_to_standard(body[n], self._sigma_and_log(n)[1]).sum()
                   for n in self.stochastic_names)

    def regularizer(self) -> Tensor:
        """The meta-batch term added to the mean query loss: ``beta * KL``."""
        return self.beta * self.kl()

    def regularizer_metrics(self) -> dict[str, float]:
        return {"kl": self.kl().item()}

    def _body_weights(self, sample: bool) -> dict[str, Tensor]:
        """Body parameters and buffers with one reparametrized draw of the stochastic ones."""
        weights = dict(self.model.body.named_parameters())
        weights.update(self.model.body.named_buffers())
        if sample:
            for n in self.stochastic_names:
                mean, sigma = weights[n], self._sigma_and_log(n)[0]
                weights[n] = mean + sigma * torch.randn_like(mean)
        return weights

    def _encoder(self, sample: bool):
        weights = self._body_weights(sample)
        return lambda x: functional_call(self.model.body, weights, (x,))

    def _encode_batch(self, batch: TaskBatch, sample: bool
                      ) -> tuple[TaskBatch, dict[str, Tensor]]:
        shots = batch.support_x.shape[1]
        inputs = torch.cat([batch.support_x, batch.query_x], dim=1)
        if sample:  # one weight draw per task
            codes = torch.stack([self._encoder(True)(task) for task in inputs])
        else:
            codes = self._encoder(False)(_flat(inputs))
            codes = codes.reshape(len(batch), -1, *codes.shape[1:])
        encoded = TaskBatch(codes[:, :shots], batch.support_y, codes[:, shots:], batch.query_y,
                            num_classes=batch.num_classes, task_id=batch.task_id)
        return encoded, {}



class MRMAMLA(_EncodedMAML, name="mr-maml-a"):
    """MR-MAML(A): a stochastic code ``z ~ N(mu(x), sigma(x)^2)``, ``beta * KL`` per task.

    ``model.body`` maps an input to ``2 * d`` numbers: the code's mean and, through a
    softplus, its standard deviation (the authors' encoder: ``Dense(80, relu)`` then two
    ``Dense(d)`` heads). During meta-training every support and query point gets its own
    reparametrized draw; each task's loss is its query loss plus ``beta`` times the KL of
    its query codes to ``N(0, I)``, averaged over query points and code dimensions as in
    the authors' notebook. At meta-test the codes are the means (``eval_sample=False``, as
    the authors' notebook) and the reported loss is the query loss alone.

    Args:
        model: a module with ``body`` (outputs ``[N, 2 d]``) and ``head`` (input ``d``).
        beta: weight of the KL (5.0 in the authors' sinusoid notebook).
        eval_sample: sample the codes at meta-test instead of using the means.
        **kwargs: `MAML` arguments.
    """

    method = "MRMAMLA"

    def __init__(self, model: nn.Module, beta: float = 5.0, eval_sample: bool = False,
                 **kwargs) -> None:
        super().__init__(model, beta, eval_sample, **kwargs)

    def code_distribution(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation ``[N, d]`` of the codes of ``x [N, ...]``."""
        out = self.model.body(x)
        if out.dim() != 2 or out.shape[1] % 2:
            raise ValueError(f"model.body must output [N, 2 * d] (code mean and scale), got "
                             f"{tuple(out.shape)}")
        mean, raw_scale = out.chunk(2, dim=1)
        return mean, F.softplus(raw_scale)

    def _codes(self, x: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        """Codes of ``x`` and the elementwise KL of their distribution to ``N(0, 1)``."""
        mean, sigma = self.code_distribution(x)
        kl = gaussian_kl_to_standard(mean, torch.log(sigma.clamp_min(1e-12)))
        return (mean + sigma * torch.randn_like(mean) if sample else mean), kl

    def _encoder(self, sample: bool):
        return lambda x: self._codes(x, sample)[0]

    def _encode_batch(self, batch: TaskBatch, sample: bool
                      ) -> tuple[TaskBatch, dict[str, Tensor]]:
        tasks = len(batch)
        support, _ = self._codes(_flat(batch.support_x), sample)
        query, kl = self._codes(_flat(batch.query_x), sample)
        encoded = TaskBatch(support.reshape(tasks, -1, support.shape[-1]), batch.support_y,
                            query.reshape(tasks, -1, query.shape[-1]), batch.query_y,
                            num_classes=batch.num_classes, task_id=batch.task_id)
        return encoded, {"kl": kl.reshape(tasks, -1).mean(dim=1)}
