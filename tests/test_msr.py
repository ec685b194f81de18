"""MSR layers (Zhou, Knowles, Finn, ICLR 2021) and the synthetic equivariant task families."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import ToyImages
from metalab.algorithms import MAML, MetaSGD
from metalab.functional import inner_loop
from metalab.nn.msr import (
    KroneckerMSRConv2d,
    LocallyConnected1d,
    MSRConv2d,
    MSRLinear,
    conv1d_sharing_matrix,
    conv_classifier,
    inner_parameter_names,
    rotation_model,
    translation_model,
)
from metalab.tasks import EpisodeSampler
from metalab.tasks.augmented import AugmentedEpisodes
from metalab.tasks.symmetry import (
    GROUPS,
    RotationEquivariantTasks,
    TranslationEquivariantTasks,
    group_composition,
    group_filter_bank,
)

DOUBLE = torch.float64


def _rotate_or_flip(x, flip, turns):
    """The group element written out independently of `transform_image`."""
    if flip:
        x = x[..., torch.arange(x.shape[-1] - 1, -1, -1)]
    for _ in range(turns):  # one counter-clockwise quarter turn: transpose, then flip rows
        x = x.transpose(-2, -1)[..., torch.arange(x.shape[-2] - 1, -1, -1), :]
    return x


# -- MSR layers compute exactly the layer their sharing matrix encodes ------------------------
@pytest.mark.parametrize("in_channels, out_channels, bias", [(1, 1, False), (2, 3, True)])
def test_msr_linear_with_convolution_sharing_is_exactly_conv1d(in_channels, out_channels, bias):
    torch.manual_seed(0)
    layer = MSRLinear.from_conv1d(in_channels, out_channels, 3, 11, bias=bias).double()
    x = torch.randn(5, in_channels, 11, dtype=DOUBLE)
    kernel = layer.v.view(out_channels, in_channels, 3)
    expected = F.conv1d(x, kernel, layer.bias_v if bias else None)
    assert torch.allclose(layer(x.flatten(1)), expected.flatten(1), rtol=0, atol=1e-14)
    # every U entry is 0/1 and every weight entry copies exactly one filter entry or is 0
    U = layer.U.detach()
    assert set(U.unique().tolist()) == {0.0, 1.0} and (U.sum(1) <= 1).all()


def test_conv1d_sharing_matrix_copies_the_filter_to_every_position():
    U = conv1d_sharing_matrix(1, 1, 3, 6)
    W = (U @ torch.tensor([1.0, 2.0, 3.0])).view(4, 6)
    expected = torch.tensor([[1.0, 2, 3, 0, 0, 0], [0, 1, 2, 3, 0, 0], [0, 0, 1, 2, 3, 0],
                             [0, 0, 0, 1, 2, 3]])
    assert torch.equal(W, expected)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_msr_conv_group_lifting_is_exactly_the_group_convolution(group):
    torch.manual_seed(0)
    layer = MSRConv2d.group_lifting(group, in_channels=2, filters=3, bias=True).double()
    x = torch.randn(4, 2, 9, 9, dtype=DOUBLE)
    base = layer.v.view(3, 2, 3, 3)
    maps = []
    for f in range(3):
        for flip, turns in GROUPS[group]:
            kernel = _rotate_or_flip(base[f], flip, turns)
            maps.append(F.conv2d(x, kernel[None], layer.bias_v[f].view(1)))
    assert torch.allclose(layer(x), torch.cat(maps, dim=1), rtol=0, atol=1e-14)


def test_msr_conv_starts_as_a_plain_convolution_and_msr_linear_as_the_official_init():
    torch.manual_seed(0)
    conv = MSRConv2d(2, 4, 3, bias=True)
    assert torch.equal(conv.U.detach(), torch.eye(72))
    x = torch.randn(3, 2, 7, 7)
    assert torch.allclose(conv(x), F.conv2d(x, conv.v.view(4, 2, 3, 3), conv.bias_v))
    layer = MSRLinear(70, 68, 3)
    assert layer.U.shape == (70 * 68, 3) and layer.v.shape == (3,)
    assert 0.005 < layer.U.std().item() < 0.015
    assert layer.weight.shape == (68, 70) and layer(torch.randn(2, 1, 70)).shape == (2, 1, 68)


def test_kronecker_msr_conv_is_the_convolution_of_its_full_sharing_matrix():
    torch.manual_seed(0)
    layer = KroneckerMSRConv2d(2, 3, 3, bias=True, padding=1).double()
    x = torch.randn(2, 2, 6, 6, dtype=DOUBLE)
    assert torch.allclose(layer(x), F.conv2d(x, layer.v.view(3, 2, 3, 3), layer.bias_v,
                                             padding=1), atol=1e-14)  # identity factors
    with torch.no_grad():
        for factor in (layer.U_out, layer.U_in, layer.U_space):
            factor.copy_(torch.randn_like(factor))
    kernel = (layer.U @ layer.v.reshape(-1)).view(3, 2, 3, 3)
    assert layer.U.shape == (54, 54)
    assert torch.allclose(layer(x), F.conv2d(x, kernel, layer.bias_v, padding=1), atol=1e-12)
    assert inner_parameter_names(nn.Sequential(layer)) == ["0.v", "0.bias_v"]


def test_locally_connected_matches_an_explicit_loop_and_conv_when_filters_are_shared():
    torch.manual_seed(0)
    layer = LocallyConnected1d(2, 3, output_size=5, kernel_size=3, stride=2, bias=True).double()
    x = torch.randn(4, 2, 11, dtype=DOUBLE)
    expected = torch.stack([
        torch.einsum("ncj,ocj->no", x[:, :, 2 * p: 2 * p + 3], layer.weight[:, :, p])
        + layer.bias[:, p] for p in range(5)], dim=-1)
    assert torch.allclose(layer(x), expected, atol=1e-14)
    shared = LocallyConnected1d(1, 1, output_size=9, kernel_size=3).double()
    kernel = torch.randn(1, 1, 3, dtype=DOUBLE)
    with torch.no_grad():
        shared.weight.copy_(kernel[:, :, None, :].expand(1, 1, 9, 3))
    x = torch.randn(4, 1, 11, dtype=DOUBLE)
    assert torch.allclose(shared(x), F.conv1d(x, kernel), atol=1e-14)


# -- the inner loop adapts v, never U; the outer loop learns U ---------------------------------
def _tiny_msr_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(MSRLinear(8, 6, 4, bias=True, num_bias_params=2)).double()
    source = TranslationEquivariantTasks(1, tasks_per_batch=3, seed=seed, num_tasks=20,
                                         examples_per_task=6, shots=2, queries=4,
                                         input_length=8, dtype=DOUBLE)
    return model, source.sample()


def test_inner_loop_changes_v_and_never_u():
    model, batch = _tiny_msr_problem()
    names = inner_parameter_names(model)
    assert names == ["0.v", "0.bias_v"]
    params = dict(model.named_parameters())
    task = batch[0]
    adapted = inner_loop(
        lambda p: F.mse_loss(torch.func.functional_call(model, p, (task.support_x,)),
                             task.support_y),
        params, 0.5, steps=3, adapt_names=names)
    for name in ("0.U", "0.bias_U"):
        assert adapted[name] is params[name]
    for name in names:
        assert not torch.allclose(adapted[name], params[name])
    learner = MAML(model, inner_lr=0.5, inner_steps=2, loss="mse", adapt=names)
    assert learner.adapt_names == names
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner.adapt(task.support_x, task.support_y)
    for name, value in model.named_parameters():  # meta-test adaptation leaves the model alone
        assert torch.equal(value, before[name])
    learner.meta_backward(batch)
    assert model[0].U.grad.abs().sum() > 0 and model[0].bias_U.grad.abs().sum() > 0


def _flat_grad(learner):
    return torch.cat([p.grad.flatten() for p in learner.parameters()])


@pytest.mark.parametrize("learner_class", [MAML, MetaSGD])
def test_msr_second_order_meta_gradient_matches_finite_differences(learner_class):
    model, batch = _tiny_msr_problem(seed=1)
    learner = learner_class(model, inner_lr=0.3, inner_steps=2, loss="mse",
                            adapt=inner_parameter_names(model)).double()
    learner.zero_grad()
    learner.meta_loss(batch)[0].backward()
    grad = _flat_grad(learner)
    params = list(learner.parameters())
    theta = torch.cat([p.detach().flatten() for p in params])

    def set_flat(flat):
        offset = 0
        with torch.no_grad():
            for p in params:
                p.copy_(flat[offset: offset + p.numel()].view_as(p))
                offset += p.numel()

    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(3):
        direction = torch.randn(theta.shape, generator=g, dtype=DOUBLE)
        direction /= direction.norm()
        losses = []
        for sign in (1, -1):
            set_flat(theta + sign * eps * direction)
            losses.append(learner.meta_loss(batch)[0].item())
        set_flat(theta)
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert abs(numeric - grad @ direction) < 1e-7 * max(1.0, abs(numeric))


def test_vmap_and_loop_give_the_same_msr_meta_gradient():
    grads = []
    for strategy in ("loop", "vmap"):
        model, batch = _tiny_msr_problem(seed=2)
        learner = MetaSGD(model, inner_lr=0.3, inner_steps=2, loss="mse", strategy=strategy,
                          adapt=inner_parameter_names(model)).double()
        learner.meta_loss(batch)[0].backward()
        grads.append(_flat_grad(learner))
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-13)


# -- the data --------------------------------------------------------------------------------
def test_rank_one_data_is_exactly_a_valid_convolution_with_the_task_filter():
    source = TranslationEquivariantTasks(1, split="test", tasks_per_batch=2, seed=0,
                                         num_tasks=50, dtype=DOUBLE)
    for index in (40, 49):
        x, y = source.task(index)
        filters = source.filters(index)
        assert x.shape == (20, 1, 70) and y.shape == (20, 1, 68) and filters.shape == (68, 3)
        assert torch.equal(filters, filters[:1].expand(68, 3))
        assert torch.allclose(y, F.conv1d(x, filters[:1].view(1, 1, 3)), rtol=0, atol=1e-13)


@pytest.mark.parametrize("rank", [2, 5])
def test_low_rank_data_shares_filters_through_a_softmax_connectivity(rank):
    source = TranslationEquivariantTasks(rank, tasks_per_batch=2, seed=0, num_tasks=50,
                                         dtype=DOUBLE)
    A = source.connectivity
    assert A.shape == (68, rank) and torch.allclose(A.sum(1), torch.ones(68, dtype=DOUBLE))
    assert (A > 0).all()
    stacked = torch.stack([source.filters(i) for i in range(10)])  # [10, 68, 3]
    # every task's filters lie in the span of the k connectivity columns, and no fewer
    flat = stacked.permute(1, 0, 2).reshape(68, -1)
    assert torch.linalg.matrix_rank(flat).item() == rank
    x, y = source.task(3)
    assert torch.allclose(y, (x.unfold(-1, 3, 1) * source.filters(3)).sum(-1), atol=1e-13)


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_pool_sharing_matrix_generates_every_task_weight(rank):
    source = TranslationEquivariantTasks(rank, tasks_per_batch=2, seed=0, num_tasks=20,
                                         input_length=12, dtype=DOUBLE)
    U = source.sharing_matrix()
    assert U.shape == (10 * 12, 3 * rank)
    for index in (0, 7):
        W = (U @ source.basis(index).reshape(-1)).view(10, 12)
        x, y = source.task(index)
        assert torch.allclose(x @ W.T, y, rtol=0, atol=1e-13)
    if rank == 1:
        assert torch.equal(U, conv1d_sharing_matrix(1, 1, 3, 12, dtype=DOUBLE))


def test_batches_have_the_official_shapes_and_are_deterministic():
    def source(**kw):
        return TranslationEquivariantTasks(2, tasks_per_batch=4, seed=3, **kw)

    a, b = source().sample(), source().sample()
    assert a.support_x.shape == (4, 1, 1, 70) and a.support_y.shape == (4, 1, 1, 68)
    assert a.query_x.shape == (4, 19, 1, 70) and a.query_y.shape == (4, 19, 1, 68)
    assert a.num_classes is None and len(set(a.task_id.tolist())) == 4
    for field in ("support_x", "support_y", "query_x", "query_y", "task_id"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    other = source(data_seed=1).sample()
    assert torch.equal(other.task_id, a.task_id) and not torch.equal(other.query_y, a.query_y)
    # support and query of a task are different examples of that task
    x, _ = source().task(int(a.task_id[0]))
    rows = torch.cat([a.support_x[0], a.query_x[0]]).flatten(1)
    matches = (rows[:, None, :] == x.flatten(1)[None]).all(-1)
    assert (matches.sum(1) == 1).all() and (matches.sum(0) <= 1).all()


def test_train_and_test_pools_are_disjoint_and_views_of_one_pool():
    train = TranslationEquivariantTasks(1, "train", tasks_per_batch=10, seed=0, num_tasks=100)
    test = TranslationEquivariantTasks(1, "test", tasks_per_batch=10, seed=0, num_tasks=100,
                                       order="sequential")
    train_ids = {i for _ in range(30) for i in train.sample().task_id.tolist()}
    test_ids = [i for _ in range(2) for i in test.sample().task_id.tolist()]
    assert train_ids <= set(range(80)) and sorted(test_ids) == list(range(80, 100))
    assert torch.equal(train.task(85)[1], test.task(85)[1])


def test_state_dict_resumes_the_exact_stream():
    source = TranslationEquivariantTasks(5, "test", tasks_per_batch=3, seed=0, num_tasks=40,
                                         order="sequential")
    source.sample()
    state = source.state_dict()
    expected = source.sample()
    fresh = TranslationEquivariantTasks(5, "test", tasks_per_batch=3, seed=9, num_tasks=40,
                                        order="sequential")
    fresh.load_state_dict(state)
    got = fresh.sample()
    assert torch.equal(got.task_id, expected.task_id) and torch.equal(got.query_y,
                                                                      expected.query_y)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_convolution_data_is_equivariant(group):
    """Transforming the input by h transforms every output map by h and permutes the group."""
    source = RotationEquivariantTasks(group, tasks_per_batch=1, seed=0, num_tasks=10,
                                      image_size=12, dtype=DOUBLE)
    order = len(GROUPS[group])
    x, y = source.task(2)
    assert x.shape == (20, 1, 12, 12) and y.shape == (20, 3 * order, 10, 10)
    bank = group_filter_bank(source.filters(2), group)
    table = group_composition(group)
    for h, (flip, turns) in enumerate(GROUPS[group]):
        moved = F.conv2d(_rotate_or_flip(x, flip, turns), bank)
        for f in range(3):
            for g in range(order):
                assert torch.allclose(moved[:, f * order + table[h][g]],
                                      _rotate_or_flip(y[:, f * order + g], flip, turns),
                                      atol=1e-12)
    batch = RotationEquivariantTasks(group, tasks_per_batch=2, seed=0, num_tasks=10).sample()
    assert batch.query_y.shape == (2, 19, 3 * order, 30, 30)


def test_group_composition_is_a_group_table():
    for group, elements in GROUPS.items():
        table = group_composition(group)
        assert all(sorted(row) == list(range(len(elements))) for row in table)
        assert table[0] == list(range(len(elements)))  # the identity comes first
    assert group_composition("C4")[1] == [1, 2, 3, 0]


def test_model_builders_name_the_parameters_adapt_selects():
    for kind in ("maml-fc", "maml-lc", "maml-conv", "msr-fc"):
        model = translation_model(kind, rank=5)
        assert model(torch.randn(3, 1, 70)).shape == (3, 1, 68)
        names = inner_parameter_names(model)
        assert names == (["0.v"] if kind == "msr-fc" else ["0.weight"])
    assert translation_model("msr-fc", rank=2)[0].num_filter_params == 6
    model = rotation_model("msr-conv", out_channels=12)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 12, 6, 6)
    assert inner_parameter_names(model) == ["0.v"]


# -- augmented episodes ----------------------------------------------------------------------
def _episodes(tasks=2):
    return EpisodeSampler(ToyImages(classes=8, per_class=6, size=6), ways=3, shots=1,
                          queries=2, tasks_per_batch=tasks, seed=0)


@pytest.mark.parametrize("augment", ["query", "both", "none"])
def test_augmented_episodes_transform_only_the_requested_sets(augment):
    plain = _episodes().sample()
    batch = AugmentedEpisodes(_episodes(), "D4", augment, seed=0).sample()
    assert torch.equal(batch.support_y, plain.support_y) and batch.num_classes == 3
    assert torch.equal(batch.support_x, plain.support_x) == (augment != "both")
    assert torch.equal(batch.query_x, plain.query_x) == (augment == "none")
    for moved, original in ((batch.support_x, plain.support_x), (batch.query_x, plain.query_x)):
        for t in range(moved.shape[0]):
            for n in range(moved.shape[1]):  # every image is some group transform of its own
                assert any(torch.equal(moved[t, n], _rotate_or_flip(original[t, n], f, r))
                           for f, r in GROUPS["D4"])


def test_augmented_episodes_use_several_group_elements_and_resume_exactly():
    source = AugmentedEpisodes(_episodes(tasks=8), "C4", "query", seed=3)
    plain = _episodes(tasks=8).sample()
    batch = source.sample()
    seen = {next(r for f, r in GROUPS["C4"]
                 if torch.equal(batch.query_x[t, n], _rotate_or_flip(plain.query_x[t, n], f, r)))
            for t in range(8) for n in range(6)}
    assert len(seen) == 4
    state = source.state_dict()
    expected = source.sample()
    fresh = AugmentedEpisodes(_episodes(tasks=8), "C4", "query", seed=99)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.sample().query_x, expected.query_x)


def test_conv_classifier_trains_with_maml_and_msr_keeps_its_factors_out_of_the_inner_loop():
    torch.manual_seed(0)
    model = conv_classifier("msr-conv", ways=3, hidden=4, image_size=8, blocks=2).double()
    names = inner_parameter_names(model)
    assert "0.U_space" not in names and "0.v" in names and "9.weight" in names
    learner = MAML(model, inner_lr=0.4, loss="cross_entropy", adapt=names)
    batch = AugmentedEpisodes(EpisodeSampler(ToyImages(classes=8, per_class=6, size=8), 3, 1,
                                             2, tasks_per_batch=2, seed=0), seed=0).sample()
    learner.meta_backward(batch.to(DOUBLE))
    assert model[0].U_space.grad.abs().sum() > 0 and model[0].U_out.grad.abs().sum() > 0


@pytest.mark.parametrize("build, message", [
    (lambda: TranslationEquivariantTasks(0), "rank must be an integer >= 1"),
    (lambda: TranslationEquivariantTasks(1, split="val"), "split must be one of"),
    (lambda: TranslationEquivariantTasks(1, order="shuffled"), "order must be one of"),
    (lambda: TranslationEquivariantTasks(1, tasks_per_batch=30, num_tasks=100, split="test"),
     "tasks_per_batch=30 but split 'test' has 20 tasks"),
    (lambda: TranslationEquivariantTasks(1, shots=5, queries=16),
     "shots+queries=21 but every task has examples_per_task=20"),
    (lambda: TranslationEquivariantTasks(1, train_fraction=1.0), "train_fraction must be in"),
    (lambda: TranslationEquivariantTasks(1, data_seed=-1), "data_seed must be an integer"),
    (lambda: TranslationEquivariantTasks(1, dtype=torch.int64), "dtype must be a floating"),
    (lambda: TranslationEquivariantTasks(1, tasks_per_batch=2, num_tasks=20).task(20),
     "task index must be in"),
    (lambda: RotationEquivariantTasks("C8"), "group must be one of ['C4', 'D4']"),
    (lambda: translation_model("msr-lc"), "kind must be one of"),
    (lambda: translation_model("msr-fc", rank=3), "rank must be one of [1, 2, 5]"),
    (lambda: rotation_model("msr-fc", 4), "kind must be one of"),
    (lambda: MSRLinear(4, 3, 0), "num_filter_params must be an integer >= 1"),
    (lambda: MSRLinear(4, 3, 2).set_sharing(torch.zeros(11, 2)), "U must have shape [12, k]"),
    (lambda: MSRLinear(4, 3, 2).set_sharing(torch.zeros(12, 2), torch.zeros(3, 1)),
     "bias_U must have no bias_U (bias=False)"),
    (lambda: group_filter_bank(torch.zeros(2, 1, 3, 2), "C4"), "filters must have shape"),
    (lambda: LocallyConnected1d(1, 1, 10)(torch.zeros(2, 1, 11)),
     "LocallyConnected1d expects x of shape [N, 1, >= 12]"),
    (lambda: conv1d_sharing_matrix(1, 1, 3, 2), "input_length must be an integer >= 3"),
    (lambda: AugmentedEpisodes(_episodes(), augment="support"), "augment must be one of"),
    (lambda: AugmentedEpisodes(_episodes(), group="C2"), "group must be one of"),
    (lambda: AugmentedEpisodes(_episodes()).transform(torch.zeros(1, 2, 1, 4, 5)),
     "AugmentedEpisodes needs square images"),
    (lambda: conv_classifier("msr-fc", 5), "kind must be one of"),
    (lambda: conv_classifier("maml-conv", 5, image_size=8), "image_size=8 is too small"),
])
def test_errors_name_the_argument(build, message):
    with pytest.raises((ValueError, IndexError, TypeError)) as error:
        build()
    assert message in str(error.value)
