"""Per-task combiners: how the tasks of a meta-batch become one update.

Loss weighting (``needs_gradients = False``): ``mean`` (the plain trainer), ``sum``,
``uncertainty`` (Kendall et al. 2018), ``group_dro`` (Sagawa et al. 2020). Gradient
combination (``needs_gradients = True``, from one Gram matrix of the per-task gradients):
``pcgrad`` (Yu et al. 2020), ``gradnorm`` (Chen et al. 2018), ``mgda`` (Sener & Koltun
2018), ``cagrad`` (Liu et al. 2021). `gradient_statistics` gives the per-step conflict and
magnitude diagnostics.
"""

from __future__ import annotations

import inspect

from metalab.combiners.base import Combiner, GradientCombiner
from metalab.combiners.cagrad import CAGrad
from metalab.combiners.diagnostics import gradient_statistics
from metalab.combiners.gradnorm import GradNorm
from metalab.combiners.mgda import MGDA
from metalab.combiners.pcgrad import PCGrad, pcgrad_coefficients
from metalab.combiners.weighting import GroupDRO, MeanLoss, SumLoss, UncertaintyWeighting
from metalab.validation import check_choice

COMBINERS: dict[str, type[Combiner]] = {
    "mean": MeanLoss,
    "sum": SumLoss,
    "pcgrad": PCGrad,
    "gradnorm": GradNorm,
    "mgda": MGDA,
    "cagrad": CAGrad,
    "uncertainty": UncertaintyWeighting,
    "group_dro": GroupDRO,
}


def build_combiner(name: str, **kwargs) -> Combiner:
    """Construct the combiner registered as ``name`` with options ``kwargs``.

    Raises ValueError for an unknown name, an unknown or missing option, or a bad value.
    """
    check_choice("combiner", name, sorted(COMBINERS))
    cls = COMBINERS[name]
    signature = inspect.signature(cls)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        accepted = ", ".join(signature.parameters) or "none"
        raise ValueError(f"combiner {name!r}: {error} (its options: {accepted})") from None
    return cls(**kwargs)


__all__ = [
    "COMBINERS",
    "MGDA",
    "CAGrad",
    "Combiner",
    "GradNorm",
    "GradientCombiner",
    "GroupDRO",
    "MeanLoss",
    "PCGrad",
    "SumLoss",
    "UncertaintyWeighting",
    "build_combiner",
    "gradient_statistics",
    "pcgrad_coefficients",
]
