"""GRPO loss and selective backward: exact gradient equivalence, rows computed, advantages."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from trainer_client.grpo import (
    GRPOConfig,
    KeptRows,
    gather_rows,
    group_advantages,
    grpo_update,
    kl_k3,
    make_optimizer,
    pack_cap,
    parse_micro_batch,
    plan_kept_rows,
    ppo_clip_loss,
    reference_micro_batch_rows,
    selective_backward,
    split_micro_batches,
)
from trainer_client.policy import PolicyConfig, VLAPolicy
from trainer_client.types import OBS_IMAGES, OBS_STATE, Trajectory

# six trajectories: groups a (mixed), b (mixed, 3 members), c (all successful: not informative)
CHUNKS = (5, 7, 3, 6, 4, 8, 5)
GROUPS = ("a", "a", "b", "b", "b", "c", "c")
SUCCESS = (True, False, True, False, False, True, True)
INSTRUCTIONS = {"a": "reach the goal", "b": "open the drawer now please", "c": "push it"}


def make_policy(images: bool = False) -> VLAPolicy:
    torch.manual_seed(0)
    cfg = PolicyConfig.preset("tiny", width=16, depth=2, heads=2)
    if images:
        cfg = PolicyConfig.preset(
            "tiny", width=16, depth=2, heads=2, num_cameras=2, image_size=16, patch_size=8
        )
    return VLAPolicy(cfg).double()


def make_batch(policy: VLAPolicy, seed: int = 0) -> list[Trajectory]:
    """Trajectories with old log-probs perturbed around the current ones, so that many ratios
    fall outside the clip range on either side."""
    rng = np.random.default_rng(seed)
    cfg = policy.config
    out = []
    for c, g, y in zip(CHUNKS, GROUPS, SUCCESS, strict=True):
        obs: dict[str, np.ndarray] = {
            OBS_STATE: rng.standard_normal((c, cfg.state_dim)).astype(np.float32)
        }
        if cfg.num_cameras:
            shape = (c, cfg.num_cameras, cfg.image_size, cfg.image_size, 3)
            obs[OBS_IMAGES] = rng.integers(0, 256, shape, dtype=np.uint8)
        actions, logp = policy.act(obs, [INSTRUCTIONS[g]] * c)
        old_logp = (logp + rng.normal(0.0, 0.4, size=c)).astype(np.float32)
        out.append(
            Trajectory(
                task_id=f"t{g}",
                group_id=g,
                instruction=INSTRUCTIONS[g],
                obs=obs,
                actions=actions,
                old_logp=old_logp,
                phase_ids=np.zeros(c, dtype=np.int64),
                success=y,
                num_steps=c * cfg.chunk_size,
            )
        )
    return out


def ht_masks(seed: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random masks (at least one kept chunk each, non-informative trajectories included) and
    arbitrary positive weights standing in for 1 / pi."""
    rng = np.random.default_rng(seed)
    masks, weights = [], []
    for c in CHUNKS:
        m = rng.random(c) < 0.4
        m[rng.integers(c)] = True
        masks.append(m)
        weights.append(np.where(m, rng.uniform(1.0, 4.0, size=c), 0.0))
    return masks, weights


def naive_loss(policy, trajectories, masks, weights, aggregation, kl_coef=0.0, ref=None,
               denominator="full"):
    """Full GRPO written out directly: ONE batch over every chunk of every trajectory.
    denominator "full" divides by chunk counts, "kept" by kept-chunk counts (masked mean)."""
    adv = group_advantages([t.success for t in trajectories], [t.group_id for t in trajectories])
    obs = {OBS_STATE: np.concatenate([t.obs[OBS_STATE] for t in trajectories])}
    if policy.config.num_cameras:
        obs[OBS_IMAGES] = np.concatenate([t.obs[OBS_IMAGES] for t in trajectories])
    instr = [t.instruction for t in trajectories for _ in range(t.num_chunks)]
    actions = np.concatenate([t.actions for t in trajectories])
    logp = policy.log_prob(obs, instr, actions)  # (sum C,)
    old = torch.as_tensor(np.concatenate([t.old_logp for t in trajectories]), dtype=logp.dtype)
    a = torch.as_tensor(np.repeat(adv, CHUNKS), dtype=logp.dtype)
    ratio = torch.exp(logp - old)
    l_ic = -torch.minimum(ratio * a, torch.clamp(ratio, 0.8, 1.28) * a)
    if kl_coef:
        with torch.no_grad():
            ref_logp = ref.log_prob(obs, instr, actions)
        l_ic = l_ic + kl_coef * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
    mw = torch.as_tensor(np.concatenate(masks) * np.concatenate(weights), dtype=logp.dtype)
    informative = adv != 0
    per_traj = torch.stack([s.sum() for s in torch.split(mw * l_ic, list(CHUNKS))])
    if denominator == "kept":
        c = torch.as_tensor([int(np.sum(m)) for m in masks], dtype=logp.dtype)
    else:
        c = torch.as_tensor(CHUNKS, dtype=logp.dtype)
    inf = torch.as_tensor(informative)
    if aggregation == "chunk":
        return per_traj[inf].sum() / c[inf].sum()
    return (per_traj[inf] / c[inf]).mean()


def grads(policy) -> torch.Tensor:
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for p in policy.parameters()
        ]
    )


@pytest.mark.parametrize("denominator", ["full", "kept"])
@pytest.mark.parametrize("images", [False, True], ids=["state", "images"])
@pytest.mark.parametrize("masked", [False, True], ids=["all-chunks", "ht-mask"])
@pytest.mark.parametrize("micro_batch", ["trajectory", "rows:3", "rows:1000", "pack:4", "pack"])
@pytest.mark.parametrize("aggregation", ["chunk", "trajectory"])
def test_selective_gradient_equals_naive_full_batch(aggregation, micro_batch, masked, images,
                                                     denominator):
    policy = make_policy(images)
    trajectories = make_batch(policy)
    masks, weights = ht_masks() if masked else ([np.ones(c, bool) for c in CHUNKS], None)
    ref_w = weights if weights is not None else [np.ones(c) for c in CHUNKS]

    policy.zero_grad()
    expected_loss = naive_loss(policy, trajectories, masks, ref_w, aggregation,
                               denominator=denominator)
    expected_loss.backward()
    expected = grads(policy).clone()
    assert expected.abs().max() > 1e-6  # a real gradient, not a vacuous comparison

    policy.zero_grad()
    cfg = GRPOConfig(aggregation=aggregation, micro_batch=micro_batch)
    stats = selective_backward(policy, trajectories, masks, weights, config=cfg,
                               denominator=denominator)
    assert (grads(policy) - expected).abs().max().item() <= 1e-9
    assert stats.loss == pytest.approx(expected_loss.item(), abs=1e-12)
    assert 0.0 < stats.clip_frac < 1.0
    # masks None means full GRPO too
    if not masked:
        policy.zero_grad()
        selective_backward(policy, trajectories, config=cfg, denominator=denominator)
        assert (grads(policy) - expected).abs().max().item() <= 1e-9


@pytest.mark.parametrize(
    "aggregation,denominator,expected",
    [
        ("chunk", "kept", [2 / 3, 4 / 3, 5 / 3]),  # mean: sum w l / 3 kept chunks
        ("chunk", "full", [2 / 5, 4 / 5, 5 / 5]),  # ht / none: sum w l / 5 chunks
        ("trajectory", "kept", [2 / 4, 4 / 4, 5 / 2]),  # per traj / k_i, mean over 2 trajs
        ("trajectory", "full", [2 / 6, 4 / 6, 5 / 4]),  # per traj / C_i, mean over 2 trajs
    ],
)
def test_loss_coefficients_by_hand(aggregation, denominator, expected):
    """L = sum_r coef_r l_r over kept rows: two informative trajectories of 3 and 2 chunks,
    masks [1 0 1] and [0 1], weights 2, 4 and 5 on the kept chunks."""
    trajs = [
        Trajectory(task_id="t", group_id="g", instruction="x", obs={},
                   actions=np.zeros((c, 1, 1), np.float32), old_logp=np.zeros(c, np.float32),
                   phase_ids=np.zeros(c, np.int64), success=y, num_steps=c)
        for c, y in ((3, True), (2, False))
    ]
    masks = [np.array([True, False, True]), np.array([False, True])]
    weights = [np.array([2.0, 0.0, 4.0]), np.array([0.0, 5.0])]
    adv = group_advantages([True, False], ["g", "g"])
    rows = plan_kept_rows(trajs, adv, masks, weights, aggregation, denominator)
    np.testing.assert_allclose(rows.coef, expected, rtol=1e-12)
    assert rows.traj.tolist() == [0, 0, 1] and rows.chunk.tolist() == [0, 2, 1]


def test_kl_term_gradient_equals_naive():
    policy = make_policy()
    ref = make_policy()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    trajectories = make_batch(policy)
    masks, weights = ht_masks()
    policy.zero_grad()
    naive_loss(policy, trajectories, masks, weights, "chunk", kl_coef=0.1, ref=ref).backward()
    expected = grads(policy).clone()
    policy.zero_grad()
    cfg = GRPOConfig(kl_coef=0.1, micro_batch="rows:4")
    stats = selective_backward(policy, trajectories, masks, weights, config=cfg,
                               denominator="full", ref_policy=ref)
    assert (grads(policy) - expected).abs().max().item() <= 1e-9
    assert stats.kl_ref > 0
    with pytest.raises(ValueError, match="ref_policy"):
        selective_backward(policy, trajectories, masks, weights, config=cfg)


@pytest.mark.parametrize("micro_batch", ["trajectory", "rows:4"])
def test_only_kept_chunks_are_computed(micro_batch):
    policy = make_policy()
    trajectories = make_batch(policy)
    masks, weights = ht_masks()
    seen: dict[str, list[int]] = {"trunk": [], "state": []}
    policy.trunk.register_forward_hook(lambda m, inp, out: seen["trunk"].append(inp[0].shape[0]))
    policy.state_encoder.register_forward_hook(
        lambda m, inp, out: seen["state"].append(inp[0].shape[0])
    )
    stats = selective_backward(
        policy, trajectories, masks, weights, config=GRPOConfig(micro_batch=micro_batch)
    )

    informative = np.array([g != "c" for g in GROUPS])
    kept = sum(int(m.sum()) for m, inf in zip(masks, informative, strict=True) if inf)
    assert kept < sum(c for c, inf in zip(CHUNKS, informative, strict=True) if inf)
    assert sum(seen["trunk"]) == kept == stats.kept_rows
    assert sum(seen["state"]) == kept
    if micro_batch == "trajectory":
        assert seen["trunk"] == [
            int(m.sum()) for m, inf in zip(masks, informative, strict=True) if inf
        ]
    else:
        assert max(seen["trunk"]) <= 4
    assert stats.skipped_trajectories == 2 and stats.informative_trajectories == 5
    assert stats.total_rows == sum(CHUNKS[:5])


def test_no_informative_trajectory_computes_nothing():
    policy = make_policy()
    trajectories = make_batch(policy)[5:]  # group c only: all successful
    calls = []
    policy.trunk.register_forward_hook(lambda m, inp, out: calls.append(1))
    before = [p.detach().clone() for p in policy.parameters()]
    opt = make_optimizer(policy, GRPOConfig())
    stats = grpo_update(policy, opt, trajectories)
    assert calls == [] and stats.kept_rows == 0 and stats.micro_batches == 0
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


@pytest.mark.parametrize("aggregation", ["chunk", "trajectory"])
def test_ht_masked_loss_is_unbiased(aggregation):
    """Enumerate every fixed-budget draw (k of C uniformly, HT weight C/k) of two trajectories:
    the mean per-chunk loss coefficient equals full GRPO's, so E[L_masked] = L_full for any
    per-chunk terms l_ic (selective_backward computes exactly sum coef * l, tested above)."""
    policy = make_policy()
    trajectories = make_batch(policy)[:2]  # group a: C = 5 and 7
    adv = group_advantages([True, False], ["a", "a"])
    budgets = (2, 3)

    def dense(rows):  # coefficients scattered back to (sum C,)
        out = np.zeros(sum(CHUNKS[:2]))
        np.add.at(out, np.array([0, CHUNKS[0]])[rows.traj] + rows.chunk, rows.coef)
        return out

    full = dense(plan_kept_rows(trajectories, adv, aggregation=aggregation))
    subsets = [
        list(itertools.combinations(range(t.num_chunks), k))
        for t, k in zip(trajectories, budgets, strict=True)
    ]
    draws = []
    for chosen in itertools.product(*subsets):
        masks, weights = [], []
        for t, s, k in zip(trajectories, chosen, budgets, strict=True):
            m = np.zeros(t.num_chunks, bool)
            m[list(s)] = True
            masks.append(m)
            weights.append(np.full(t.num_chunks, t.num_chunks / k))
        draws.append(dense(plan_kept_rows(trajectories, adv, masks, weights, aggregation)))
    np.testing.assert_allclose(np.mean(draws, axis=0), full, rtol=0, atol=1e-15)
    if aggregation == "chunk":
        np.testing.assert_allclose(full, 1 / 12)
    else:
        np.testing.assert_allclose(full, np.repeat([1 / (5 * 2), 1 / (7 * 2)], [5, 7]))


def test_grpo_update_steps_and_reports():
    policy = make_policy()
    trajectories = make_batch(policy)
    masks, weights = ht_masks()
    cfg = GRPOConfig(lr=1e-3, ppo_epochs=2, micro_batch="trajectory")
    opt = make_optimizer(policy, cfg)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = grpo_update(policy, opt, trajectories, masks, weights, config=cfg)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    assert stats.grad_norm is not None and stats.grad_norm > 0
    assert stats.update_s >= stats.forward_backward_s + stats.optimizer_s > 0
    assert stats.micro_batches == 5  # one per informative trajectory
    assert set(stats.as_dict()) >= {"loss", "kept_rows", "clip_frac", "approx_kl", "update_s"}


def test_advantages_known_values():
    eps = 1e-6
    adv = group_advantages(
        [1, 0, 1, 0, 0, 1, 1, 0, 0, 1],
        ["a", "a", "b", "a", "b", "a", "c", "d", "b", "e"],
    )
    # a: y = 1,0,0,1 -> mean 0.5, population std 0.5
    np.testing.assert_allclose(adv[[0, 1, 3, 5]], np.array([1, -1, -1, 1]) * 0.5 / (0.5 + eps))
    # b: y = 1,0,0 -> mean 1/3, population std sqrt(2)/3
    std_b = np.sqrt(2.0) / 3.0
    np.testing.assert_allclose(adv[[2, 4, 8]], np.array([2 / 3, -1 / 3, -1 / 3]) / (std_b + eps))
    # singletons and all-equal groups: exactly zero
    assert adv[6] == 0.0 and adv[7] == 0.0 and adv[9] == 0.0
    assert np.all(group_advantages([1, 1, 1], ["g", "g", "g"]) == 0.0)
    assert np.all(group_advantages([0, 0], ["g", "g"]) == 0.0)
    with pytest.raises(ValueError):
        group_advantages([1, 0], ["g"])


def test_ppo_clip_loss_known_values():
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 2.0])
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1])
    l_ic, rho, logratio = ppo_clip_loss(ratio.log(), torch.zeros(5), adv, 0.2, 0.28)
    torch.testing.assert_close(logratio, ratio.log())
    # A>0, rho high: clipped at 1.28; A<0, rho low: clipped at 0.8; A<0 rho high and A>0 rho
    # low: the unclipped (pessimistic) term; inside the range: -rho A
    torch.testing.assert_close(l_ic, torch.tensor([-1.28, 0.8, 1.5, -0.5, -2.2]))
    torch.testing.assert_close(rho, ratio)
    torch.testing.assert_close(kl_k3(torch.zeros(2), torch.zeros(2)), torch.zeros(2))


def test_micro_batch_split_and_plan():
    policy = make_policy()
    trajectories = make_batch(policy)
    masks, weights = ht_masks()
    adv = group_advantages(SUCCESS, GROUPS)
    rows = plan_kept_rows(trajectories, adv, masks, weights, "trajectory")
    assert set(rows.traj.tolist()) <= {0, 1, 2, 3, 4}
    per_traj = split_micro_batches(rows, "trajectory")
    assert [len(set(rows.traj[i].tolist())) for i in per_traj] == [1] * len(per_traj)
    fixed = split_micro_batches(rows, "rows:4")
    assert [len(i) for i in fixed[:-1]] == [4] * (len(fixed) - 1)
    assert np.array_equal(np.concatenate(fixed), np.arange(rows.num_rows))
    np.testing.assert_allclose(
        rows.coef,
        [weights[i][c] / (CHUNKS[i] * 5) for i, c in zip(rows.traj, rows.chunk, strict=True)],
    )
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        plan_kept_rows(trajectories, adv, [m[:-1] for m in masks], weights)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"aggregation": "token"}, "aggregation"),
        ({"micro_batch": "rows:0"}, "rows:N"),
        ({"micro_batch": "chunks"}, "micro_batch"),
        ({"micro_batch": "pack:0"}, "pack:N"),
        ({"micro_batch": "pack:x"}, "pack:N"),
        ({"pack_memory_ratio": 0.0}, "--pack-memory-ratio 0.0: must be in"),
        ({"pack_memory_ratio": 1.5}, "--pack-memory-ratio 1.5: must be in"),
        ({"pack_reference": "pack:4"}, "pack_reference"),
        ({"pack_reference": "rows:0"}, "rows:N"),
        ({"clip_coef_low": 1.0}, "--clip-coef-low 1.0: must be in"),
        ({"ppo_epochs": 0}, "--ppo-epochs 0: must be >= 1"),
        ({"max_grad_norm": 0.0}, "--max-grad-norm 0.0: must be > 0"),
        ({"kl_coef": -1.0}, "--kl-coef -1.0: must be >= 0"),
    ],
)
def test_config_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs)


def test_the_loss_denominator_is_the_updates_and_is_checked():
    """What the loss divides by follows the weighting of the selection's weights: an argument of
    the update next to them, not a field of GRPOConfig."""
    policy = make_policy()
    trajectories = make_batch(policy)
    masks, weights = ht_masks()
    assert "loss_denominator" not in {f.name for f in dataclasses.fields(GRPOConfig)}
    with pytest.raises(ValueError, match="denominator='kept_chunks'"):
        selective_backward(policy, trajectories, masks, weights, denominator="kept_chunks")


# ---- micro-batch policies: 'pack' -----------------------------------------------------------


def rows_of(kept: list[int], chunks: list[int] | None = None) -> KeptRows:
    """KeptRows of informative trajectories with kept[i] kept rows (of chunks[i] chunks)."""
    chunks = chunks or kept
    traj = np.repeat(np.arange(len(kept)), kept).astype(np.int64)
    return KeptRows(
        traj=traj,
        chunk=np.concatenate([np.arange(k) for k in kept]) if kept else np.zeros(0, np.int64),
        coef=np.ones(len(traj)),
        advantage=np.ones(len(traj)),
        old_logp=np.zeros(len(traj)),
        total_rows=sum(chunks),
        informative=len(kept),
        skipped=0,
        max_chunks=max(chunks, default=0),
    )


def test_parse_micro_batch():
    assert parse_micro_batch("trajectory") == ("trajectory", None)
    assert parse_micro_batch("rows:32") == ("rows", 32)
    assert parse_micro_batch("pack:12") == ("pack", 12)
    assert parse_micro_batch("pack") == ("pack", None)
    with pytest.raises(ValueError, match="pack:N"):
        parse_micro_batch("pack:")


@pytest.mark.parametrize("seed", range(20))
def test_pack_is_an_ordered_partition_with_the_fewest_micro_batches_under_the_cap(seed):
    rng = np.random.default_rng(seed)
    kept = rng.integers(1, 15, size=rng.integers(1, 12)).tolist()
    rows = rows_of(kept)
    for cap in (1, 2, 3, 5, 8, 12, 40):
        batches = split_micro_batches(rows, f"pack:{cap}")
        # a partition of arange(R) into consecutive ranges, in order
        assert np.array_equal(np.concatenate(batches), np.arange(rows.num_rows))
        assert all(np.array_equal(b, np.arange(b[0], b[-1] + 1)) for b in batches)
        assert all(1 <= len(b) <= cap for b in batches)
        # as few micro-batches as rows:cap, the fewest any partition under the cap can have
        assert len(batches) == -(-rows.num_rows // cap)
        assert len(batches) == len(split_micro_batches(rows, f"rows:{cap}"))


def test_pack_cuts_at_trajectory_boundaries_while_that_is_free():
    # 16 trajectories of 10 kept rows, cap 12: 14 micro-batches (ceil(160 / 12)); the slack of
    # 14 * 12 - 160 = 8 rows lets the first four end at a trajectory boundary, the rest fill up
    rows = rows_of([10] * 16)
    batches = split_micro_batches(rows, "pack:12")
    assert [len(b) for b in batches] == [10] * 4 + [12] * 10
    assert [sorted(set(rows.traj[b].tolist())) for b in batches[:5]] == [[0], [1], [2], [3],
                                                                           [4, 5]]
    # whole trajectories when they fit: 3 + 3 + 3 rows, cap 4 -> one trajectory each
    assert [b.tolist() for b in split_micro_batches(rows_of([3, 3, 3]), "pack:4")] == [
        [0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # two trajectories per micro-batch when they fit together
    assert [len(b) for b in split_micro_batches(rows_of([5] * 4), "pack:12")] == [10, 10]
    # a trajectory with more kept rows than the cap is split
    assert [len(b) for b in split_micro_batches(rows_of([7]), "pack:3")] == [3, 3, 1]
    assert split_micro_batches(rows_of([]), "pack:3") == []
    assert split_micro_batches(rows_of([]), "pack") == []


def test_pack_automatic_cap_is_relative_to_full_grpo():
    rows = rows_of([10] * 16, chunks=[48] * 16)
    assert reference_micro_batch_rows(rows, "trajectory") == 48
    assert reference_micro_batch_rows(rows, "rows:32") == 32
    assert reference_micro_batch_rows(rows, "rows:1000") == 16 * 48  # at most the batch
    assert pack_cap(rows) == 12  # floor(0.25 x 48)
    assert pack_cap(rows, 0.25, "rows:32") == 8
    assert pack_cap(rows, 0.1, "rows:32") == 3
    assert pack_cap(rows, 0.01, "rows:32") == 1  # at least one row
    batches = split_micro_batches(rows, "pack")
    assert len(batches) == 14 and max(len(b) for b in batches) == 12
    b8 = split_micro_batches(rows, "pack", pack_memory_ratio=0.25, pack_reference="rows:32")
    assert len(b8) == 20 and max(len(b) for b in b8) == 8
    # the reference is over informative trajectories only (a long all-success one is not)
    policy = make_policy()
    trajectories = make_batch(policy)  # informative: C = 5, 7, 3, 6, 4; group c (8, 5) not
    adv = group_advantages(SUCCESS, GROUPS)
    planned = plan_kept_rows(trajectories, adv)
    assert planned.max_chunks == 7 and pack_cap(planned, 0.5) == 3


def test_gradient_is_the_same_under_every_micro_batch_policy():
    """float32 tiny policy: the same kept rows partitioned differently give the same gradient
    and the same statistics."""
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.preset("tiny", width=16, depth=2, heads=2))
    trajectories = make_batch(policy)
    masks, weights = ht_masks()
    out = {}
    for micro_batch in ("trajectory", "rows:2", "rows:5", "pack:3", "pack:9", "pack"):
        policy.zero_grad(set_to_none=True)
        stats = selective_backward(policy, trajectories, masks, weights,
                                   config=GRPOConfig(micro_batch=micro_batch))
        out[micro_batch] = (grads(policy).clone(), stats)
    g0, s0 = out["trajectory"]
    assert g0.abs().max() > 1e-6
    for micro_batch, (g, s) in out.items():
        # float32 sums in another order: equal to rounding, relative to the largest entry
        atol = 1e-6 * g0.abs().max().item()
        torch.testing.assert_close(g, g0, rtol=1e-4, atol=atol, msg=micro_batch)
        assert s.loss == pytest.approx(s0.loss, rel=1e-5, abs=1e-7)
        assert s.clip_frac == s0.clip_frac and s.kept_rows == s0.kept_rows
        assert s.approx_kl == pytest.approx(s0.approx_kl, rel=1e-4, abs=1e-7)
    kept = out["trajectory"][1].kept_rows
    assert out["pack:3"][1].micro_batches == -(-kept // 3)
    assert out["pack:9"][1].micro_batches == -(-kept // 9)


def test_gather_rows_takes_each_segment_once():
    policy = make_policy(images=True)
    trajectories = make_batch(policy)
    masks, weights = ht_masks()
    rows = plan_kept_rows(trajectories, group_advantages(SUCCESS, GROUPS), masks, weights)
    idx = np.arange(rows.num_rows)
    obs, instructions, actions = gather_rows(trajectories, rows, idx)
    for k in obs:
        expected = np.concatenate(
            [trajectories[t].obs[k][c][None] for t, c in zip(rows.traj, rows.chunk, strict=True)]
        )
        assert obs[k].dtype == expected.dtype and np.array_equal(obs[k], expected)
    assert np.array_equal(
        actions, np.stack([trajectories[t].actions[c] for t, c in zip(rows.traj, rows.chunk,
                                                                      strict=True)])
    )
    assert instructions == [trajectories[t].instruction for t in rows.traj]
    # a trajectory stored in another dtype is cast, as np.concatenate would
    trajectories[1].obs[OBS_STATE] = trajectories[1].obs[OBS_STATE].astype(np.float64)
    obs2, _, _ = gather_rows(trajectories, rows, idx)
    assert obs2[OBS_STATE].dtype == np.float64
    np.testing.assert_allclose(obs2[OBS_STATE], obs[OBS_STATE], rtol=1e-7)
