"""Data-parallel steps on 2 CPU processes (gloo) equal one process's step on the union of the two
shards (nas.engine.distributed): supernet weights, alpha, and a scoring run."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from tests.conftest import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _steps(kind: str, folder: str, weights: str | None, n: int = 1):
    """Run ``n`` steps of ``kind`` in this process (rank or single) and return the parameters."""
    from nas.engine.supernet_search import ArchitectureSearch, SupernetTraining

    cfg = tiny_cfg(**{"data.batch_size": 4, "search.alpha_batch_size": 4,
                      "search.largest_path_steps": 1})
    if kind == "supernet":
        tr = SupernetTraining(cfg, folder)
        rows = [tr.train_step() for _ in range(n)]
        state = {k: v.detach().clone() for k, v in tr.model.net.state_dict().items()}
        # the gradients of the last step (averaged over the ranks, clipped): DDP's whole claim
        state.update({f"grad:{k}": p.grad.clone() for k, p in tr.model.net.named_parameters()
                      if p.grad is not None})
        return state, rows
    if kind == "alpha":
        a = ArchitectureSearch(cfg, folder, weights)
        torch.manual_seed(7)
        a.model.gates.reset_parameters()
        rows = [a.train_step() for _ in range(n)]
        return {k: v.detach().clone() for k, v in a.model.gates.state_dict().items()}, rows
    from nas.engine.scoring import score_architecture
    from nas.study.objective import study_space

    c = tiny_cfg(**{"score.batch_size": 4, "score.steps": n})
    space = study_space(c)
    arch = {p.op_label(): "acla" for p in space}
    for p in space:
        arch.update({p.key_label(r): 2 for r in p.refs})
    s = score_architecture(c, space, arch, 0)
    return {"psnr": torch.tensor(s.psnr_db)}, []


def _rank(rank: int, port: int, kind: str, folder: str, weights: str | None, out: str,
          n: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from nas.engine import distributed as dist

        state, rows = _steps(kind, folder, weights, n)
        shard = dist.shard(torch.arange(4)).tolist()
        if rank == 0:
            torch.save({"state": state, "rows": rows, "world": dist.world_size(), "shard": shard},
                       out)
    finally:
        tdist.destroy_process_group()


def _ddp(tmp_path, kind: str, weights: str | None = None, n: int = 1):
    out = str(tmp_path / f"{kind}_ddp_{n}.pt")
    mp.start_processes(_rank, args=(_free_port(), kind, str(tmp_path / f"{kind}_ddp_{n}"), weights,
                                    out, n), nprocs=2, start_method="fork")
    res = torch.load(out, weights_only=False)
    assert res["world"] == 2 and res["shard"] == [0, 1]  # rank 0 really saw half the batch
    return res


@pytest.mark.parametrize("kind", ["supernet", "scoring"])
@pytest.mark.parametrize("n, atol", [(1, 2e-6), (3, 1e-5)], ids=["one-step", "three-steps"])
def test_two_process_steps_equal_one_process_steps(tmp_path, kind, n, atol):
    """The averaged gradients equal one process's to 5e-5 of their scale (float32 sums in
    another order over ~1e4 pixels; measured up to 1.6e-5); the weights after one Adam step to
    2e-6 (Adam divides by |g|, so the last bit of a near-zero gradient element moves its weight
    by up to ~1e-6 at lr 1e-3), after three steps to 1e-5."""
    single, rows = _steps(kind, str(tmp_path / "single"), None, n)
    ddp = _ddp(tmp_path, kind, n=n)
    for k, v in single.items():
        if k.startswith("grad:"):  # float32 sums in another order: 1e-5 of the tensor's scale
            assert (v - ddp["state"][k]).abs().max() <= 5e-5 * v.abs().max() + 1e-12, k
        else:  # Adam divides by |g|: a tiny gradient's last bit moves a weight by ~1e-6 x lr/1e-3
            assert torch.allclose(v, ddp["state"][k], atol=atol, rtol=1e-5), k
    if kind == "supernet":
        assert [r["path"] for r in rows] == [r["path"] for r in ddp["rows"]]
        for a, b in zip(rows, ddp["rows"]):  # the logged loss is the global batch's
            assert a["l1"] == pytest.approx(b["l1"], abs=1e-6)


def test_two_process_alpha_steps_equal_one_process_steps(tmp_path):
    from nas.engine.supernet_search import SupernetTraining

    cfg = tiny_cfg(**{"search.supernet_steps": 2, "search.largest_path_steps": 1,
                      "search.checkpoint_every": 1})
    assert SupernetTraining(cfg, tmp_path / "sn").run()
    weights = str(tmp_path / "sn" / "supernet.pt")
    single, _ = _steps("alpha", str(tmp_path / "single"), weights, 3)
    ddp = _ddp(tmp_path, "alpha", weights, 3)
    for k, v in single.items():
        assert torch.allclose(v, ddp["state"][k], atol=1e-6, rtol=0), k
    assert any(v.abs().max() > 1e-3 for v in single.values())  # alpha moved
