"""What every meta-RL method shares as a `MetaLearner`: its metric is the return, its loss
the negative return, it acts in an environment (so the supervised ``adapt_task`` /
``predict`` pair does not apply and says what to call instead), and its batches are
`EnvironmentTasks` from the environment task source. MAML-RL, RL² and PEARL derive from it.
"""

from __future__ import annotations

from typing import ClassVar

from metalab.algorithms.base import MetaLearner
from metalab.rl.task_source import EnvironmentTasks


class PolicyLearner(MetaLearner):
    """Base of the meta-RL methods (module docstring). ``adapts_by`` completes the refusal
    messages: how a user adapts this method to environment tasks."""

    outer_update_is_loss_gradient = False
    adapts_by: ClassVar[str] = "the family's collector"

    @property
    def metric_name(self) -> str:
        return "return"

    @property
    def loss_name(self) -> str:
        return "negative_return"

    def adapt_task(self, support_x, support_y=None, *, training, **options):
        raise TypeError(f"{type(self).__name__} adapts to environment tasks, not to a support "
                        f"set of examples: use {self.adapts_by}")

    def predict(self, state, x):
        raise TypeError(f"{type(self).__name__}'s policy acts in an environment: use "
                        f"{self.adapts_by}")

    def check_batch(self, batch) -> None:
        """Raise unless ``batch`` is `EnvironmentTasks` (a config whose ``data.name`` is an
        environment family)."""
        if not isinstance(batch, EnvironmentTasks):
            raise TypeError(f"{type(self).__name__} needs a batch of environment tasks "
                            f"(EnvironmentTasks, from a config whose data.name is an "
                            f"environment), got {type(batch).__name__}")

    def check_evaluation(self, training: bool) -> None:
        """`task_losses` is the meta-test path of these methods; they train through
        ``meta_backward``."""
        if training:
            raise TypeError(f"{type(self).__name__} trains through meta_backward, not through "
                            f"task_losses")
