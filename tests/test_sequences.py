import pytest
import torch

from ckd.sequences import COMPLEX_TASKS, TASKS, make_task


@pytest.mark.parametrize("name", list(TASKS))
def test_shapes_seeds_and_maps(name):
    task = make_task(name, 4, 20, 5, seed=3)
    assert task.x.shape == (4, 20, 5) and task.x.dtype == (torch.complex128 if name in COMPLEX_TASKS else torch.float64)
    assert torch.equal(task.x, make_task(name, 4, 20, 5, seed=3).x)
    assert not torch.equal(task.x, make_task(name, 4, 20, 5, seed=4).x)
    # the returned map generates the sequence: x_{t+1} = f(x_t)
    assert torch.allclose(task.f(task.x[:, :-1]), task.x[:, 1:], rtol=0, atol=1e-12)
    # each sequence has its own f
    assert not torch.allclose(task.x[0, 1:], task.f(task.x[1:2, :-1].expand(4, -1, -1))[0])


def test_linear_families():
    A = make_task("linear", 8, 5, 6, seed=0).params["A"]
    eye = torch.eye(6, dtype=torch.float64).expand(8, 6, 6)
    assert torch.allclose(A @ A.transpose(-1, -2), eye, atol=1e-12)
    rot = make_task("rotation", 8, 5, 5, seed=0)
    eig = torch.linalg.eigvals(rot.params["A"])
    assert torch.allclose(eig.abs(), torch.ones_like(eig.abs()), atol=1e-10)
    assert torch.allclose(rot.x.norm(dim=-1), torch.ones(8, 5, dtype=torch.float64))
    G = make_task("gaussian-linear", 2, 5, 4, seed=0, scale=0.5).params["A"]
    assert not torch.allclose(G @ G.transpose(-1, -2), eye[:2, :4, :4], atol=1e-3)


@pytest.mark.parametrize("name", ["periodic", "periodic-gaussian"])
def test_periodic_has_period(name):
    x = make_task(name, 3, 23, 4, period=7, seed=1).x
    assert torch.equal(x[:, 7:], x[:, :-7])
    assert (x[:, 1:7] - x[:, :1]).norm(dim=-1).min() > 0


def test_noise_is_process_noise():
    clean = make_task("linear", 2, 30, 3, seed=0)
    noisy = make_task("linear", 2, 30, 3, seed=0, noise=0.01)
    assert torch.equal(clean.x[:, 0], noisy.x[:, 0])
    resid = noisy.x[:, 1:] - clean.f(noisy.x[:, :-1])
    assert 0.003 < resid.std() < 0.03


def test_unknown_task_and_bad_options():
    with pytest.raises(ValueError, match="unknown task"):
        make_task("lorenz", 1, 5, 3)
    with pytest.raises(ValueError, match="period"):
        make_task("periodic", 1, 5, 3, period=0)


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("shared", [True, False])
def test_x0_fixes_the_start_and_keeps_the_maps(name, shared):
    """x_0 = x0 (the first cycle point for the periodic families), the rest is f applied, and the
    seed draws the same maps (the same other cycle points) and the same noise as without x0."""
    x0 = torch.tensor([0.3, -1.2, 0.5, 2.0]) if shared else torch.randn(3, 4, dtype=torch.float64)
    free = make_task(name, 3, 12, 4, seed=7)
    fixed = make_task(name, 3, 12, 4, seed=7, x0=x0.numpy() if shared else x0)
    assert torch.equal(fixed.x[:, 0], x0.to(torch.float64).expand(3, 4))
    assert torch.allclose(fixed.f(fixed.x[:, :-1]), fixed.x[:, 1:], rtol=0, atol=1e-12)
    for key, value in free.params.items():
        if key == "points":  # c_0 is x0; c_1..c_{P-1} as drawn without it
            assert torch.equal(fixed.params[key][:, 1:], value[:, 1:])
        elif isinstance(value, torch.Tensor):
            assert torch.equal(fixed.params[key], value), key
    again = make_task(name, 3, 12, 4, seed=7, x0=free.x[:, 0])  # the drawn start given back: the same task
    assert torch.equal(again.x, free.x)


def test_x0_with_noise_draws_the_same_noise():
    clean = make_task("linear", 2, 20, 3, seed=0, noise=0.01)
    fixed = make_task("linear", 2, 20, 3, seed=0, noise=0.01, x0=clean.x[:, 0])
    assert torch.equal(fixed.x, clean.x)


@pytest.mark.parametrize("x0, error, words", [
    ([1.0, 2.0], ValueError, "x0 must have shape (d,) = (3,) or (batch, d) = (2, 3), got (2,)"),
    ([[1.0, 2.0, 3.0]] * 3, ValueError, "got (3, 3)"),
    ([1.0, float("nan"), 0.0], ValueError, "x0 contains NaN or inf"),
    ([1.0, float("inf"), 0.0], ValueError, "x0 contains NaN or inf"),
    ([1 + 1j, 0, 0], TypeError, "x0 must be real, got dtype complex128"),
    ("abc", TypeError, "x0 must be a numeric array, got str"),
    ([[1.0, 2.0], [3.0]], TypeError, "x0 must be a numeric array"),
])
@pytest.mark.parametrize("name", ["linear", "periodic", "nonlinear"])
def test_bad_x0_one_line(name, x0, error, words):
    with pytest.raises(error) as err:
        make_task(name, 2, 5, 3, x0=x0)
    assert words in str(err.value) and "\n" not in str(err.value)
