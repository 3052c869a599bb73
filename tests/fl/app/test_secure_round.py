"""Secure aggregation, proven on what the aggregator receives: the real ClientApp and mods.

Three participants run the real ClientApp (flwr's ``secaggplus_mod`` inside ``secure_mod``) in
this process through :class:`InProcessGrid`; the strategy runs the SecAgg+ stages of
``fl/app/secure.py``. The same run in plain FedAvg gives each participant's true update.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from fedcloud.local.synth import generate
from fl.app import privacy, task
from fl.app.protocol import AHEAD_RECORD, traffic
from fl.app.records import RoundRecord
from fl.app.runconfig import RunConfig
from fl.app.secure import SecureRound, choose_params, fitting
from fl.app.strategy import BoundedFedAvg, NodesLostError
from fl.app.wire import on_grid
from tests.fl.app.inprocess import InProcessGrid


class _Store:
    def __init__(self) -> None:
        self.rounds: list[RoundRecord] = []

    def log_round(self, record: RoundRecord, state: dict[str, np.ndarray]) -> None:
        self.rounds.append(record)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("secure-data")
    dirs = generate("covid", root, ["p1", "p2", "p3"], 12, 6, image_size=32, seed=3)
    return [dirs[p] for p in ("p1", "p2", "p3")]


def _cfg(**changes: Any) -> RunConfig:
    base = RunConfig(model="covid_cnn", width=4, image_size=32, num_classes=3, rounds=1,
                     local_epochs=1, batch_size=4, learning_rate=0.05, fraction_train=1.0,
                     min_nodes=2, phase_timeout_s=5, node_wait_s=0, seed=1)
    return replace(base, **changes)


def _initial(cfg: RunConfig) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg.model_spec())
    # What a fresh run starts from: the model on float16's grid (fl/app/strategy.py).
    return on_grid({k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
                   "float16")


def _run(cfg: RunConfig, data: list[Path], tmp: Path,
         die_after: dict[int, str] | None = None) -> tuple[InProcessGrid, _Store, Any, Any]:
    grid = InProcessGrid(cfg, data, tmp / "cache")
    grid.die_after.update(die_after or {})
    store = _Store()
    initial = _initial(cfg)
    final = BoundedFedAvg(cfg, store).run(grid, initial)  # type: ignore[arg-type]
    return grid, store, initial, final


def _true_updates(grid: InProcessGrid, initial: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """Each node's plain train reply (its update: trained - received), flattened."""
    out = {}
    for msg in grid.received:
        arrays = msg.content.array_records.get("arrays")
        if arrays is None or msg.metadata.message_type != "train":
            continue
        out[int(msg.metadata.src_node_id)] = np.concatenate(
            [arrays[k].numpy().ravel() for k in initial])
    return out


def test_choose_params_scale_with_the_participants() -> None:
    three, twenty = choose_params(3), choose_params(20)
    assert (three.shares, three.threshold) == (3, 2)
    assert (twenty.shares, twenty.threshold) == (11, 6) and twenty.shares % 2 == 1
    for p in (three, twenty):  # n summed values below the modulus, with headroom
        assert p.sampled * p.quantization_range <= p.modulus_range // 2
    with pytest.raises(ValueError, match="at least 2"):
        choose_params(1)


def test_secure_aggregate_matches_plain_fedavg_and_reveals_no_update(
        data: list[Path], tmp_path: Path) -> None:
    plain_grid, _, initial, plain = _run(_cfg(secure_aggregation=False), data, tmp_path)
    grid, store, _, secure = _run(_cfg(), data, tmp_path)
    scale = max(float(np.abs(v).max()) for v in plain.values())
    diff = max(float(np.abs(secure[k] - plain[k]).max()) for k in plain)
    assert 0 < diff <= 1e-5 * scale  # equal within the quantisation (and not trivially 0)
    assert any(float(np.abs(plain[k] - initial[k]).max()) > 1e-3 for k in plain)  # it trained
    truth = _true_updates(plain_grid, initial)
    assert len(truth) == 3
    # They are the true updates: their mean (equal example counts) is plain FedAvg's step.
    step = np.concatenate([(plain[k] - initial[k]).ravel() for k in initial])
    assert np.abs(np.mean(list(truth.values()), axis=0) - step).max() <= 1e-6
    stages = []
    for msg in grid.received:  # everything the aggregator got in the secure run
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        assert all(len(rec) == 0 for rec in msg.content.array_records.values()), \
            "no array leaves a participant in clear during a secure round"
        if configs is None or Key.MASKED_PARAMETERS not in configs:
            continue
        stages.append(Stage.COLLECT_MASKED_VECTORS)
        masked = np.concatenate([bytes_to_ndarray(b).astype(np.float64).ravel()
                                 for b in configs[Key.MASKED_PARAMETERS]])[1:]  # weight first
        for node, update in truth.items():
            corr = abs(float(np.corrcoef(masked[: update.size], update)[0, 1]))
            assert corr <= 0.05, f"masked vector correlates with node {node}'s update: {corr}"
    assert len(stages) == 3
    # The declared traffic: four exchanges; the masked upload is 4 bytes per model element.
    declared = traffic("float32", secure=True)
    elements = sum(v.size for v in initial.values())
    masked_bytes = [sum(len(b) for b in m.content.config_records[RECORD_KEY_CONFIGS]
                        [Key.MASKED_PARAMETERS]) for m in grid.received
                    if Key.MASKED_PARAMETERS in m.content.config_records.get(
                        RECORD_KEY_CONFIGS, {})]
    body = elements * declared.upload_ratio * 4
    for size in masked_bytes:  # plus one .npy header per array and the weight's
        assert body < size <= body + 160 * (len(initial) + 1)
    record = store.rounds[0]
    # A run's first round sets up on its own: four exchanges; later rounds two (declared).
    assert record.extra["phases"] == 4 and declared.phases_per_round == 2
    assert record.extra["secagg_keys"] == "own stages"
    assert record.extra["protection"] == "secagg+"
    assert record.extra["secagg_threshold"] == 2 and record.extra["secagg_lost"] == {}
    # The setup stated 10,000 examples as the bound; the replies said 12: the share-keys stage
    # set 12 (before any update was masked) for the finest quantisation, with one setup.
    assert record.extra["secagg_max_weight"] == 12.0
    assert [_stage_of(m) for m in grid.sent].count(Stage.SETUP) == 3


def _stage_of(msg: Any) -> str | None:
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if configs is None else str(configs.get(Key.STAGE))


def test_later_rounds_share_their_keys_on_the_previous_rounds_messages(
        data: list[Path], tmp_path: Path) -> None:
    cfg = _cfg(rounds=3)
    plain = _run(replace(cfg, secure_aggregation=False), data, tmp_path)[3]
    grid, store, _, secure = _run(cfg, data, tmp_path)
    scale = max(float(np.abs(v).max()) for v in plain.values())
    assert max(float(np.abs(secure[k] - plain[k]).max()) for k in secure) <= 1e-4 * scale
    assert [r.extra["phases"] for r in store.rounds] == [4, 2, 2]
    assert [r.extra["secagg_keys"] for r in store.rounds] == ["own stages", "ahead", "ahead"]
    assert [sorted(r.extra["secagg_stage_s"]) for r in store.rounds][1:] == [
        [Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK]] * 2
    assert all(r.extra["secagg_max_weight"] == 12.0 for r in store.rounds)
    # Setup and share keys went on their own only once per node; the next rounds' rode on the
    # collect and unmask messages, none on the last round's.
    stages = [_stage_of(m) for m in grid.sent]
    assert (stages.count(Stage.SETUP), stages.count(Stage.SHARE_KEYS)) == (3, 3)
    rides = [(str(m.metadata.group_id), _stage_of(m)) for m in grid.sent
             if AHEAD_RECORD in m.content.config_records]
    assert sorted(set(rides)) == [("1", Stage.COLLECT_MASKED_VECTORS), ("1", Stage.UNMASK),
                                  ("2", Stage.COLLECT_MASKED_VECTORS), ("2", Stage.UNMASK)]
    assert len(rides) == 12
    for msg in grid.received:
        assert all(len(rec) == 0 for rec in msg.content.array_records.values())


def test_a_participant_lost_while_sharing_the_next_rounds_keys_is_left_out_of_it(
        data: list[Path], tmp_path: Path) -> None:
    # Node 3 sends round 1's masked vector (and round 2's public keys), then is lost: round 1
    # still sums all three; round 2 goes on with the keys the other two shared.
    cfg = _cfg(rounds=2)
    first = _run(replace(cfg, secure_aggregation=False, rounds=1), data, tmp_path)[3]
    # Plain FedAvg of round 2 over the two, from round 1's three-participant model.
    plain_cfg = replace(cfg, secure_aggregation=False)
    plain = BoundedFedAvg(plain_cfg, _Store()).run(  # type: ignore[arg-type]
        InProcessGrid(plain_cfg, data[:2], tmp_path / "c2"), first, first_round=2)
    _, store, _, secure = _run(cfg, data, tmp_path, die_after={3: Stage.COLLECT_MASKED_VECTORS})
    one, two = store.rounds
    assert one.extra["secagg_lost"] == {"3": Stage.UNMASK}
    assert one.extra["contributors"] == ["p1", "p2", "p3"]
    assert (two.extra["secagg_keys"], two.extra["phases"]) == ("ahead", 2)
    assert two.extra["contributors"] == ["p1", "p2"] and two.extra["secagg_lost"] == {}
    scale = max(float(np.abs(v).max()) for v in plain.values())
    assert max(float(np.abs(secure[k] - plain[k]).max()) for k in plain) <= 1e-4 * scale


def test_float16_secure_rounds_send_each_step_and_match_float32(
        data: list[Path], tmp_path: Path) -> None:
    from fl.app.wire import BASE_KEY

    cfg = _cfg(rounds=3)
    f32 = _run(cfg, data, tmp_path)[3]
    grid, store, _, f16 = _run(replace(cfg, wire_dtype="float16"), data, tmp_path)
    assert [r.extra["phases"] for r in store.rounds] == [4, 2, 2]
    collects = [m for m in grid.sent if _stage_of(m) == Stage.COLLECT_MASKED_VECTORS]
    steps = [BASE_KEY in m.content.config_records["config"] for m in collects]
    assert steps == [False] * 3 + [True] * 6  # the whole (exact) start, then steps only
    assert all(a.dtype == "float16" for m in collects
               for k, a in m.content.array_records["arrays"].items() if "@" not in k
               and a.dtype != "int64")
    scale = max(float(np.abs(v).max()) for v in f32.values())
    assert max(float(np.abs(f16[k] - f32[k]).max()) for k in f32) <= 1e-3 * scale


def test_keys_shared_ahead_are_used_only_by_the_same_unrestarted_nodes() -> None:
    params = choose_params(3)
    prepared = SecureRound(None, [1, 2, 3], params, 5.0, "2")  # type: ignore[arg-type]
    prepared.keyed, prepared.keyed_at, prepared.lost = {1, 2, 3}, 100.0, {4: Stage.SHARE_KEYS}
    before = {1: 50.0, 2: 60.0, 3: None}
    assert fitting(prepared, "2", [1, 2, 3], params, before) is prepared
    assert prepared.lost == {}  # node 4 was lost in round 1, not in this one
    assert fitting(prepared, "2", [1, 2, 3], params, {**before, 3: 150.0}) is None  # restarted
    assert fitting(prepared, "2", [1, 2], params, before) is None  # another sample
    assert fitting(prepared, "3", [1, 2, 3], params, before) is None
    assert fitting(None, "2", [1, 2, 3], params, before) is None


def test_a_next_round_whose_keys_failed_ahead_sets_up_on_its_own(
        data: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fl.app import client_app

    def broken(msg: Any, context: Any, configs: Any) -> None:
        return None  # a ClientApp that answers no stage riding ahead

    monkeypatch.setattr(client_app, "_ahead_stage", broken)
    cfg = _cfg(rounds=2)
    plain = _run(replace(cfg, secure_aggregation=False), data, tmp_path)[3]
    _, store, _, secure = _run(cfg, data, tmp_path)
    assert [r.extra["phases"] for r in store.rounds] == [4, 4]
    assert [r.extra["secagg_keys"] for r in store.rounds] == ["own stages"] * 2
    scale = max(float(np.abs(v).max()) for v in plain.values())
    assert max(float(np.abs(secure[k] - plain[k]).max()) for k in plain) <= 1e-4 * scale


def test_a_participant_lost_after_its_masked_vector_does_not_fail_the_round(
        data: list[Path], tmp_path: Path) -> None:
    _, _, _, plain = _run(_cfg(secure_aggregation=False, min_nodes=2), data, tmp_path)
    grid, store, _, secure = _run(_cfg(min_nodes=2), data, tmp_path,
                                  die_after={3: Stage.COLLECT_MASKED_VECTORS})
    assert 3 in grid.dead
    record = store.rounds[0]
    assert record.extra["secagg_lost"] == {"3": Stage.UNMASK}
    assert record.extra["dropped_nodes"] == [3] and record.extra["contributors"] == [
        "p1", "p2", "p3"]
    # Its masked vector is in the sum: the aggregate is still all three participants' FedAvg.
    scale = max(float(np.abs(v).max()) for v in plain.values())
    assert max(float(np.abs(secure[k] - plain[k]).max()) for k in plain) <= 1e-3 * scale


def test_below_the_threshold_the_run_ends_cleanly_with_nodes_lost(
        data: list[Path], tmp_path: Path) -> None:
    # The round falls below the threshold, runs again with who is connected: 1 < minNodes.
    with pytest.raises(NodesLostError, match=r"1 node\(s\) connected after waiting 0 s"):
        _run(_cfg(min_nodes=2), data, tmp_path,
             die_after={2: Stage.COLLECT_MASKED_VECTORS, 3: Stage.COLLECT_MASKED_VECTORS})


@pytest.mark.parametrize("placement", ["client", "server"])
def test_differential_privacy_is_recorded_with_its_budget(
        placement: str, data: list[Path], tmp_path: Path) -> None:
    cfg = _cfg(rounds=2, dp_placement=placement, dp_clipping_norm=0.5, dp_noise_multiplier=1.2)
    _, store, _, _ = _run(cfg, data, tmp_path)
    eps = [r.extra["dp_epsilon"] for r in store.rounds]
    assert eps[0] < eps[1]  # the budget composes over rounds
    assert eps[1] == pytest.approx(privacy.epsilon([(1.2, 1.0)] * 2, 1e-5))
    assert all(r.extra["protection"] == f"secagg+ dp({placement})" for r in store.rounds)


# Lost after the setup stage (so during share keys, which also sets the weight bound): the
# others never mask with it. Lost after the share-keys stage: they masked with it, so the
# aggregator rebuilds its key from their shares and removes those pairwise masks. Either way
# the sum is the other two's.
@pytest.mark.parametrize(("died_after", "lost_at"), [
    (Stage.SETUP, Stage.SHARE_KEYS), (Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS)])
def test_a_participant_lost_before_its_masked_vector_is_left_out_of_the_sum(
        died_after: str, lost_at: str, data: list[Path], tmp_path: Path) -> None:
    _, _, _, plain = _run(_cfg(secure_aggregation=False), data[:2], tmp_path)
    _, store, _, secure = _run(_cfg(), data, tmp_path, die_after={3: died_after})
    record = store.rounds[0]
    assert record.extra["secagg_lost"] == {"3": lost_at}
    assert record.extra["contributors"] == ["p1", "p2"]
    scale = max(float(np.abs(v).max()) for v in plain.values())
    assert max(float(np.abs(secure[k] - plain[k]).max()) for k in plain) <= 1e-5 * scale


def test_fewer_contributors_than_min_nodes_end_the_run_after_its_attempts(
        data: list[Path], tmp_path: Path) -> None:
    with pytest.raises(NodesLostError, match=r"2 node\(s\) connected .* at least 3 needed"):
        _run(_cfg(min_nodes=3), data, tmp_path, die_after={3: Stage.SETUP})


def test_a_resumed_run_never_under_reports_the_budget_spent() -> None:
    from fl.app.errors import AppError
    from fl.app.resume import Resumable
    from fl.app.server_app import dp_steps

    cfg = _cfg(dp_placement="client", dp_noise_multiplier=1.2)
    done = tuple({"server_round": r, "extra": {"dp_noise_multiplier_effective": z}}
                 for r, z in ((1, 1.2), (2, 0.9)))
    found = Resumable("run", "KILLED", 2, None, rounds=done, corrupt=(3,))
    # Rounds 1-2 as recorded; round 3 (corrupt checkpoint, released) and the round aggregated
    # when it stopped, at the smallest noise recorded.
    assert dp_steps(found, cfg) == [(1.2, 1.0), (0.9, 1.0), (0.9, 1.0), (0.9, 1.0)]
    assert dp_steps(found, _cfg()) == []
    bare = Resumable("run", "KILLED", 1, None, rounds=({"server_round": 1, "extra": {}},))
    with pytest.raises(AppError, match="budget it spent is unknown"):
        dp_steps(bare, cfg)
