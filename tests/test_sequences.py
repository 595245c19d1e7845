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
