"""Real Flower processes on loopback (127.0.2.0/24): TLS, node auth, training, kills.

A TLS SuperLink with node authentication (restarted when it dies, as its systemd unit does),
three SuperNodes on synthetic data in the Kaggle layout, the FL Initializer end to end, refused
nodes, a SuperLink killed mid-run (the run resumes), and a SuperNode killed mid-run.

One SuperLink and three SuperNodes serve the whole module (module-scoped fixtures); the tests run
in file order and the kill test, which consumes a node, runs last.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedcloud.core.procs import ManagedProcess
from fedcloud.local.localfed import LocalFederation, local_federation
from fedcloud.local.synth import generate
from fl.app.records import METRICS
from fl.app.runconfig import RunConfig
from fl.initializer.certs import make_ca, make_node_key
from fl.initializer.flwr_cli import run_info_from_json
from fl.initializer.superlink import free_port
from fl.initializer.training import CONNECTION, TrainingResult, run_bound_s, start_training
from fl.orchestrator.supernode import start_supernode

pytestmark = pytest.mark.slow

LINK_HOST = "127.0.2.1"
NAMES = ("us", "asia", "eu")
NODE_HOSTS = {"us": "127.0.2.11", "asia": "127.0.2.12", "eu": "127.0.2.13"}
IMAGE = 32
REJECT_WAIT_S = 6.0  # --max-wait-time of the nodes that must be refused
ONLINE_TIMEOUT_S = 60.0
REPLY_SENT = "Sent successfully"  # a SuperNode's log line per reply it pushed


def _config(**changes: object) -> RunConfig:
    base = RunConfig(model="covid_cnn", width=4, image_size=IMAGE, num_classes=3, rounds=2,
                     local_epochs=2, batch_size=8, learning_rate=0.05, fraction_train=1.0,
                     min_nodes=3, phase_timeout_s=60, node_wait_s=30, seed=1)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("flower")
    data = generate("covid", root / "data", NAMES, train_per_participant=40,
                    test_per_participant=12, image_size=IMAGE, seed=7)
    with local_federation(root, NAMES, data, link_host=LINK_HOST, node_hosts=NODE_HOSTS,
                          torch_threads=1, max_wait_time_s=60,
                          online_timeout_s=ONLINE_TIMEOUT_S, supervised=True) as federation:
        yield federation


def test_registered_nodes_are_online_over_tls_with_auth(fed: LocalFederation) -> None:
    assert "--enable-supernode-auth" in fed.link.argv
    assert "--ssl-certfile" in fed.link.argv and "--insecure" not in fed.link.argv
    status = {n.node_id: n.status for n in fed.cli.list_nodes(CONNECTION)}
    assert {status[i] for i in fed.node_ids.values()} == {"online"}


def _start_refused_node(fed: LocalFederation, name: str, ca: Path, key: Path) -> ManagedProcess:
    host = "127.0.2.20" if name == "rogue" else "127.0.2.21"
    return start_supernode(fed.root / "refused" / name, superlink=fed.link.address,
                           data_dir=fed.data["us"], participant=name, ca_cert=ca,
                           private_key=key, runtime_host=host, runtime_port=free_port(host),
                           max_wait_time_s=REJECT_WAIT_S)


def test_unregistered_key_and_foreign_ca_are_refused(fed: LocalFederation) -> None:
    rogue = make_node_key(fed.root / "rogue", "rogue")
    other_ca = make_ca(fed.root / "other-ca")
    # An unregistered key, with the right CA; and a registered key without the deployment CA.
    unregistered = _start_refused_node(fed, "rogue", fed.certs.ca.cert, rogue.private_key)
    no_ca = _start_refused_node(fed, "no-ca", other_ca.cert, fed.certs.nodes["us"].private_key)
    try:
        # Both give up after --max-wait-time instead of retrying forever.
        assert unregistered.proc.wait(timeout=REJECT_WAIT_S + 60) != 0
        assert no_ca.proc.wait(timeout=REJECT_WAIT_S + 60) != 0
    finally:
        unregistered.stop()
        no_ca.stop()
    assert "Failed to activate SuperNode" in unregistered.log_text()
    assert "CERTIFICATE_VERIFY_FAILED" in no_ca.log_text()
    nodes = fed.cli.list_nodes(CONNECTION)
    assert {n.node_id for n in nodes} == set(fed.node_ids.values())  # nobody new joined


def _train(fed: LocalFederation, cfg: RunConfig, **kwargs: object) -> TrainingResult:
    keys = {n: fed.certs.nodes[n].public_key for n in NAMES}
    return start_training(superlink=fed.link.address, ca_cert=fed.certs.ca.cert, node_keys=keys,
                          run_config=cfg, state_dir=fed.root / "state", cli=fed.cli,
                          **kwargs)  # type: ignore[arg-type]


def test_end_to_end_training_records_every_round_across_a_superlink_kill(
        fed: LocalFederation) -> None:
    from fl.registry.store import load_model, open_store

    cfg = _config(tracking_uri=str(fed.root / "registry"), experiment="fedcloud-test",
                  run_name="e2e")
    old = fed.link.process
    killed = threading.Event()

    def on_round(rnd: dict[str, object]) -> None:
        # Round 1 is committed once round 2's replies are in: kill in the final evaluation.
        if rnd["round"] == 1 and not killed.is_set():
            killed.set()
            old.proc.kill()

    result = _train(fed, cfg, on_round=on_round, max_resumes=2)
    assert killed.is_set()
    assert (result.status, result.flower_status) == ("COMPLETED", "finished:completed")
    # The SuperLink came back on its address and database; the job resumed once, at round 2.
    assert fed.link.process is not old and fed.link.address == f"{LINK_HOST}:{old.argv[4]}"
    assert len(result.flower_runs) == 2 and len(result.interruptions) == 1
    assert [(r["from_round"], r["next_round"]) for r in result.resumes] == [(1, 2)]
    assert fed.cli.run_info(CONNECTION, result.flower_runs[0]).finished
    # The run's status read in this process (Control API) is what `flwr ls` prints.
    for run_id in result.flower_runs:
        here = fed.cli.run_info(CONNECTION, run_id)
        printed = [run_info_from_json(r) for r in fed.cli._call_json(
            ["ls", CONNECTION, "--run-id", str(run_id)])["runs"]]
        assert [(r.run_id, r.status, r.details, r.elapsed_s, r.inbound_bytes, r.outbound_bytes)
                for r in printed] == [(here.run_id, here.status, here.details, here.elapsed_s,
                                       here.inbound_bytes, here.outbound_bytes)]
    assert [r["round"] for r in result.rounds] == [1, 2]
    # Every ClientApp was forked warm by its node's starter (fl/orchestrator/warm/).
    for proc in fed.nodes.values():
        text = proc.log_text()
        assert "warm ClientApp starter ready on" in text
        assert text.count("warm ClientApp start, pid") >= 3  # rounds 1-2 (+ again) and final
    for rnd in result.rounds:
        assert set(METRICS) <= set(rnd["metrics"])
        assert sorted(c["participant"] for c in rnd["per_client"]) == sorted(NAMES)
        # Global figures come from the summed confusion matrix (3 x 12 test images).
        assert sum(map(sum, rnd["confusion"])) == 36
    assert result.rounds[-1]["metrics"]["accuracy"] > 1 / 3 + 0.1  # above chance (3 classes)
    assert result.network_bytes > 0
    # The keys were registered by the fixture; registering them again is recognised, and the
    # restarted SuperLink kept the nodes' ids.
    assert result.node_ids == fed.node_ids

    store = open_store(str(fed.root / "registry"), "fedcloud-test")
    (run,) = store.runs()  # one store run for the job: every round in it once
    assert (run.run_id, run.status) == (result.store_run_id, "FINISHED")
    assert [r.server_round for r in run.rounds] == [1, 2]
    for rnd in run.rounds:
        path, _card = store.download(fed.root / f"round-{rnd.server_round}.pt",
                                     server_round=rnd.server_round, run_id=run.run_id)
        model = load_model(path)
        out = model(torch.zeros(2, 1, IMAGE, IMAGE))
        assert tuple(out.shape) == (2, 3)
    assert run.rounds[-1].metrics["accuracy"] == pytest.approx(
        result.rounds[-1]["metrics"]["accuracy"])


def test_killed_supernode_run_completes_with_the_others(fed: LocalFederation) -> None:
    # A secure round: "eu" is killed after it sent its masked vector and before the unmask
    # stage. The delay study holds the others back (seed 1 draws a 6 s sleep for "us" and
    # "asia", none for "eu"), so eu's vector is in well before anyone is sent the unmask stage.
    # The round must complete from the others' shares, eu's update in the sum; the phase after
    # (the final evaluation) skips the dead node.
    cfg = _config(rounds=1, min_nodes=2, phase_timeout_s=20, node_wait_s=20, seed=1,
                  delay_prob=0.5, delay_s=6.0)
    victim = fed.nodes["eu"]
    sent = victim.log_text().count(REPLY_SENT)
    killed = threading.Event()

    def kill_after_its_masked_vector() -> None:
        deadline = time.monotonic() + 120
        # Its third reply of the run is its masked vector (setup, share keys, collect); the
        # others still sleep.
        while victim.log_text().count(REPLY_SENT) < sent + 3:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        victim.kill()
        killed.set()

    threading.Thread(target=kill_after_its_masked_vector, daemon=True).start()
    started = time.monotonic()
    result = _train(fed, cfg)
    took = time.monotonic() - started
    assert killed.is_set()
    assert result.status == "COMPLETED", result.detail
    assert [r["round"] for r in result.rounds] == [1]
    last = result.rounds[-1]
    assert last["protection"] == "secagg+"
    assert last["secagg_lost"] == {str(fed.node_ids["eu"]): "unmask"}
    assert sorted(last["contributors"]) == sorted(NAMES)  # its masked update is in the sum
    assert sorted(c["participant"] for c in last["per_client"]) == ["asia", "us"]
    assert fed.node_ids["eu"] in last["dropped_nodes"]
    # The stated bound: the dead node costs phase timeouts, never a wait without end.
    assert took < run_bound_s(cfg)


def test_too_few_nodes_ends_the_run_with_nodes_lost(fed: LocalFederation) -> None:
    # Fewer participants than min-nodes are connected: the ServerApp waits node-wait-s, then
    # ends the run with a clear status instead of Flower's endless "waiting for nodes".
    cfg = _config(rounds=1, min_nodes=len(NAMES) + 1, node_wait_s=2, phase_timeout_s=10)
    result = _train(fed, cfg)
    assert result.status == "NODES_LOST"
    assert result.flower_status == "finished:failed"
    assert "at least 4 needed" in result.detail
    assert result.rounds == []
