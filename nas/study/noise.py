"""A study's noise floor and its noise-aware front.

Every architecture of a study is scored by one protocol with common random numbers
(:mod:`nas.engine.scoring`); its scores per seed live in the study's system attributes. This
module turns them into one row per *distinct architecture*:

* ``psnr_db`` - the mean over the seeds scored, ``psnr_se`` its standard error, ``n_seeds``;
* ``delta_db`` - the mean paired difference to the plain backbone (every point ``skip``) over the
  seeds both were scored with, ``delta_se`` its standard error: "does it beat the backbone?";
* ``front`` - on the Pareto front of (mean PSNR up, GFLOPs down) among all distinct
  architectures, *reference architectures included* (marked by their names);
* ``tie`` - a front point that is not better than the next cheaper front point by more than two
  standard errors of the paired difference (so its extra FLOPs buy nothing measurable).

:func:`measure_noise` scores the front's architectures, the references and the plain backbone
with ``score.noise_seeds`` seeds once the trials are done, so every front point has an error bar.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from nas.engine.scoring import ScoreCache, arch_key, mean_and_se, pooled_seed_sd
from nas.study import pareto

#: ``study system attr`` holding the scoring protocol key and the plain backbone's key
PROTOCOL_ATTR = "score_protocol"
PLAIN_ATTR = "plain_arch_key"
#: two front points closer than this many standard errors of their difference are a tie
TIE_SIGMAS = 2.0


def scores_by_arch(system_attrs: dict, protocol: str) -> dict[str, dict[int, float]]:
    """``{arch_key: {seed: psnr_db}}`` of the study's cached scores under ``protocol``."""
    out: dict[str, dict[int, float]] = {}
    prefix = f"score:{protocol}:"
    for k, v in system_attrs.items():
        if k.startswith(prefix):
            ak, seed = k[len(prefix):].rsplit(":", 1)
            out.setdefault(ak, {})[int(seed)] = float(v["psnr_db"])
    return out


def paired_delta(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean and standard error of ``a[s] - b[s]`` over the seeds both have, and their count."""
    common = sorted(set(a) & set(b))
    if not common:
        return math.nan, math.nan, 0
    m, se = mean_and_se([a[s] - b[s] for s in common])
    return m, se, len(common)


def architecture_rows(trials: Sequence[Any], scores: dict[str, dict[int, float]],
                      plain_key: str | None,
                      key: Callable[[Any], str | None] | None = None) -> list[dict]:
    """One row per distinct architecture of the COMPLETE trials (see the module docstring).

    Args:
        trials: FrozenTrials with user attrs ``arch_key`` (and ``reference``).
        scores: from :func:`scores_by_arch`.
        plain_key: the plain backbone's architecture key.
        key: a trial's architecture key (default: its ``arch_key`` user attr).

    Returns:
        Rows with ``arch_key, trials, references, gflops, psnr_db, psnr_se, n_seeds, delta_db,
        delta_se, front, tie, knee, near_front`` (front rows by GFLOPs first; ``tie``: a front point
        within noise of the next cheaper one; ``near_front``: off the front but within noise of a
        front point that dominates it).
    """
    rows: dict[str, dict] = {}
    key = key or (lambda t: t.user_attrs.get("arch_key"))
    for t in trials:
        ak = key(t)
        if t.state.name != "COMPLETE" or ak is None:
            continue
        r = rows.setdefault(ak, {"arch_key": ak, "trials": [], "references": [],
                                 "gflops": float(t.values[1]), "arch": t.user_attrs.get("arch")})
        r["trials"].append(t.number)
        if "reference" in t.user_attrs:
            r["references"].append(t.user_attrs["reference"])
    for ak, r in rows.items():
        vals = scores.get(ak, {})
        seeds = sorted(vals)
        if seeds:
            r["psnr_db"], r["psnr_se"] = mean_and_se([vals[s] for s in seeds])
        else:  # only the trial value is known (scores of another protocol)
            r["psnr_db"], r["psnr_se"] = math.nan, math.nan
        r["n_seeds"] = len(seeds)
        if plain_key is not None and plain_key in scores:
            r["delta_db"], r["delta_se"], _ = paired_delta(vals, scores[plain_key])
        else:
            r["delta_db"], r["delta_se"] = math.nan, math.nan
    out = list(rows.values())
    pts = [(r["psnr_db"], r["gflops"]) for r in out if not math.isnan(r["psnr_db"])]
    scored = [r for r in out if not math.isnan(r["psnr_db"])]
    mask = pareto.pareto_mask(pts) if pts else []
    for r in out:
        r["front"] = r["tie"] = r["knee"] = r["near_front"] = False
    for r, on in zip(scored, mask):
        r["front"] = on
    front = sorted((r for r in out if r["front"]), key=lambda r: r["gflops"])
    sd = pooled_seed_sd([list(v.values()) for v in scores.values()])

    def within(better: dict, worse: dict) -> bool:
        """``better`` beats ``worse`` by at most TIE_SIGMAS standard errors of their paired
        difference (same seeds; with fewer than 2 common seeds, of two scores with the pooled
        seed SD)."""
        d, se, n = paired_delta(scores.get(better["arch_key"], {}), scores.get(worse["arch_key"], {}))
        if math.isnan(d):
            d = better["psnr_db"] - worse["psnr_db"]
        if n >= 2 and not math.isnan(se):
            return d <= TIE_SIGMAS * se
        return not math.isnan(sd) and d <= TIE_SIGMAS * sd * math.sqrt(2)

    for cheaper, r in zip(front, front[1:]):
        r["tie"] = within(r, cheaper)
    for r in out:  # off the front, but not beaten beyond noise by a front point dominating it
        r["near_front"] = not r["front"] and any(
            f["gflops"] <= r["gflops"] and f["psnr_db"] >= r["psnr_db"] and within(f, r)
            for f in front)
    if front:
        k = pareto.knee_index([(r["psnr_db"], r["gflops"]) for r in front])
        front[k]["knee"] = True
    return sorted(out, key=lambda r: (not r["front"], r["gflops"]))


def front_within_noise(rows: Sequence[dict]) -> bool:
    """Whether the whole front is one tie: every front point after the cheapest is a tie."""
    front = [r for r in rows if r["front"]]
    return len(front) > 1 and all(r["tie"] for r in sorted(front, key=lambda r: r["gflops"])[1:])


def measure_noise(setup, study, storage, device: Any = "cpu", log=None, group=None) -> int:
    """Score the front's architectures, the references and the plain backbone with seeds
    ``0 .. score.noise_seeds-1`` (missing scores only), until every architecture on the front
    has them: new seeds move means, so an architecture can join the front only after a round
    (e.g. when the plain backbone's mean drops), and it is then scored too - the front never
    compares a mean over several seeds with a single seed's score.

    Args:
        setup, study, storage: the study.
        device: torch device.
        log: called with a line per scoring run.
        group: runs the scoring on every rank of a ``torchrun`` group.

    Returns:
        The number of scoring runs made.
    """
    from nas.study.objective import study_score_cache, study_space

    cfg = setup.cfg
    n = cfg.score.noise_seeds or cfg.score.seeds
    space = study_space(cfg)
    cache: ScoreCache = study_score_cache(study, storage,
                                          run=group.score if group is not None else None)
    sid = storage.get_study_id_from_name(study.study_name)
    protocol = storage.get_study_system_attrs(sid).get(PROTOCOL_ATTR)
    if protocol is None:
        return 0
    from nas.engine.network import canonical_arch

    plain = canonical_arch(space, space.validate({p.op_label(): "skip" for p in space}))
    runs = 0
    for _ in range(len(study.get_trials(deepcopy=False)) + 2):  # each round adds a front point
        sys_attrs = storage.get_study_system_attrs(sid)
        scores = scores_by_arch(sys_attrs, protocol)
        rows = architecture_rows(study.get_trials(deepcopy=False), scores,
                                 sys_attrs.get(PLAIN_ATTR))
        wanted = [r["arch"] for r in rows if (r["front"] or r["references"]) and r["arch"]]
        todo = {arch_key(a): a for a in [*wanted, plain]
                if sum(s in scores.get(arch_key(a), {}) for s in range(n)) < n}
        if not todo:
            break
        for key, arch in todo.items():
            def counted(_score, key=key):
                nonlocal runs
                runs += 1
                if log is not None:
                    log(f"noise floor: {key} seed {_score.seed}: {_score.psnr_db:.3f} dB "
                        f"({_score.seconds:.0f} s)")

            cache.scores(cfg, space, arch, range(n), device=device, on_run=counted)
    return runs
