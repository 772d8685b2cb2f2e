"""A light SecAgg+ federation for protocol tests: real Flower simulation, real SecAgg+ stages, sites whose
"update" is a fixed known vector, so what a (curious) center can rebuild is checked exactly.

Sites come in groups of three (partition ids 3g, 3g+1, 3g+2), site names "p<pid>". Guarded sites run fedcare's
guard with signed keys (shared/privacy/secagg_auth.py: the same KeyAuthenticator as client/secure_aggregation.py;
identity keys under <state_root>/p<pid>/keys, the roster is their group) before Flower's `secaggplus_mod`; stock
sites run `secaggplus_mod` alone. Both use fedcare's full-strength masks (the center too), as the mask generator
must match on both sides, except "stock-mask" sites, which run Flower's own 32-bit expansion (a site on another
version). The ServerApp runs one scenario per group, one after another, in the same run: honest aggregation, a
dropout, or a curious center's attack (`CuriousSecAggPlus`, `KeySubstitutingSecAggPlus`), and leaves what it got
in `RESULTS` (the ServerApp runs in the test's process). A site that trains leaves a file `trained` in its folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Code, FitIns, FitRes, Status, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract, parameters_mod
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_separate
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    public_key_to_bytes,
)

import shared.privacy.secagg_masks as masks
from server.secure_aggregation import AuthenticatedSecAggPlus, _GridHook
from shared.privacy.keys import generate_site_key, load_private_key, load_public_key
from shared.privacy.roster import Roster, roster_from_keys
from shared.privacy.secagg_params import SecAggParameters
from shared.privacy.security_log import SECURITY_LOG_FILE, SecurityLog

PARAMS = SecAggParameters(
    num_sites=3, num_shares=3, reconstruction_threshold=2, weight_bound=4.0, max_num_examples=100,
    clipping_range=4.0, max_weight=100.0, quantization_range=(2**32 - 1) // 3, modulus_range=2**32,
)
SHAPES = [(3, 4), (5,)]
OUTSIDER = 987654321  # a node id that is in no site's neighbour set
RESULTS: dict[str, dict[str, Any]] = {}


def security_log(state_root: str | Path, pid: int, key: Any = None) -> SecurityLog:
    """The security log of simulated site `pid` (its own state folder)."""
    return SecurityLog(Path(state_root) / f"p{pid}" / SECURITY_LOG_FILE, f"p{pid}", key)


def _key_path(state_root: str | Path, pid: int, impostor: bool = False) -> Path:
    return Path(state_root) / f"p{pid}" / "keys" / (f"p{pid}.impostor.key" if impostor else f"p{pid}.key")


def make_identity_keys(state_root: str | Path, pids: range, impostors: frozenset[int] = frozenset()) -> None:
    """Each site's identity key (born at the site, as SiteWorker does); an impostor also gets a key the roster lacks."""
    for pid in pids:
        for impostor in (False, True) if pid in impostors else (False,):
            path = _key_path(state_root, pid, impostor)
            path.parent.mkdir(parents=True, exist_ok=True)
            generate_site_key(path, path.with_suffix(".pub"))


def group_roster(state_root: str | Path, pid: int, not_on_roster: frozenset[int]) -> Roster:
    """The roster site `pid` holds: its group's sites, less the outsiders (an outsider still lists itself)."""
    group = range(3 * (pid // 3), 3 * (pid // 3) + 3)
    return roster_from_keys({f"p{p}": load_public_key(_key_path(state_root, p).with_suffix(".pub"))
                             for p in group if p == pid or p not in not_on_roster})


def trained_marker(state_root: str | Path, pid: int) -> Path:
    return Path(state_root) / f"p{pid}" / "trained"


def site_update(pid: int) -> tuple[list[np.ndarray], int]:
    """The known 'trained weights' and example count of partition `pid` (float64, as client/secure_aggregation.py
    sends them: Flower quantises in the dtype it is given, and float32 holds ~1e9 levels only to ~1e-6)."""
    rng = np.random.default_rng(1000 + pid)
    return [rng.uniform(-3, 3, size=s) for s in SHAPES], 20 + 30 * (pid % 3)


def weighted_mean(pids: list[int]) -> list[np.ndarray]:
    updates = [site_update(p) for p in pids]
    total = sum(n for _, n in updates)
    return [sum(u[i].astype(np.float64) * n for u, n in updates) / total for i in range(len(SHAPES))]


# -- sites ------------------------------------------------------------------------------------------
def build_client_app(state_root: str, guarded_groups: set[int], failing_pids: set[int],
                     declining_pids: frozenset[int] = frozenset(), *, not_on_roster: frozenset[int] = frozenset(),
                     impostors: frozenset[int] = frozenset(), stock_mask_pids: frozenset[int] = frozenset()) -> ClientApp:
    """`failing_pids` fail while training (after sharing their keys); `declining_pids` refuse at setup;
    `not_on_roster` sites are missing from their group's rosters; `impostors` sign with a key that is not their
    roster key; `stock_mask_pids` run Flower's stock 32-bit mask expansion (and say so in their signed keys)."""

    def pid_of(context: Context) -> int:
        return int(context.node_config["partition-id"])

    def guarded(pid: int, msg: Message, context: Context, call_next: Any) -> Message:
        from flwr.client.mod import secaggplus_mod

        from shared.privacy.secagg_auth import KeyAuthenticator
        from shared.privacy.secagg_guard import secagg_guard

        key = load_private_key(_key_path(state_root, pid, impostor=pid in impostors))
        auth = KeyAuthenticator(f"p{pid}", key, lambda: group_roster(state_root, pid, not_on_roster))
        return secagg_guard(msg, context, lambda m, c: secaggplus_mod(m, c, call_next),
                            security_log=security_log(state_root, pid, key), expected=PARAMS, auth=auth)

    def mod(msg: Message, context: Context, call_next: Any) -> Message:
        from flwr.client.mod import secaggplus_mod

        import shared.privacy.secagg_masks  # noqa: F401  (same masks as the center)

        pid = pid_of(context)
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if pid in declining_pids and configs is not None and configs.get(Key.STAGE) == Stage.SETUP:
            raise RuntimeError(f"site {pid} declines the round at setup")
        client_mod = import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
        if pid in stock_mask_pids:  # this site's installation expands masks the stock way, for this call
            client_mod.pseudo_rand_gen = masks.STOCK_PSEUDO_RAND_GEN
        try:
            if pid // 3 not in guarded_groups:
                return secaggplus_mod(msg, context, call_next)
            return guarded(pid, msg, context, call_next)
        finally:
            client_mod.pseudo_rand_gen = masks.full_strength_pseudo_rand_gen

    app = ClientApp(mods=[mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = pid_of(context)
        trained_marker(state_root, pid).parent.mkdir(parents=True, exist_ok=True)
        trained_marker(state_root, pid).touch()
        if pid in failing_pids:
            raise RuntimeError(f"site {pid} drops out while training")
        arrays, n = site_update(pid)
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"site": ConfigRecord({"pid": pid_of(context)})}), reply_to=msg)

    return app


# -- center -----------------------------------------------------------------------------------------
class GroupStrategy(LegacyFedAvg):
    """Asks exactly one group's nodes and keeps whatever aggregate the workflow hands over."""

    def __init__(self, nodes: list[int], grid: Grid, scenario: str) -> None:
        super().__init__(fraction_evaluate=0.0)
        self.nodes, self.grid, self.scenario = nodes, grid, scenario

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
        return [(GridClientProxy(n, self.grid, self.grid.run.run_id), FitIns(parameters, {})) for n in self.nodes]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
        from flwr.common import parameters_to_ndarrays

        RESULTS[self.scenario]["aggregate"] = parameters_to_ndarrays(results[0][1].parameters) if results else None
        RESULTS[self.scenario]["results_seen"] = [(p.node_id, r.num_examples) for p, r in results]
        return None, {}


@dataclass
class UnmaskAttempt:
    active: dict[int, list[int]]  # node asked -> the active list it is sent
    dropped: dict[int, list[int]]


class CuriousSecAggPlus(AuthenticatedSecAggPlus):
    """A center that runs the first three stages honestly (forwarding the sites' signed keys), keeps every masked
    vector it receives, then sends crafted unmask requests (`attempts`, one after another) to rebuild the
    victim's own update."""

    def __init__(self, scenario: str, victim: int, attempts: list[str]) -> None:
        super().__init__(PARAMS, check_versions=False)
        self.scenario, self.victim, self.attempts = scenario, victim, attempts
        self.masked: dict[int, list[np.ndarray]] = {}

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        curious = self

        class Recording:
            def __getattr__(self, name: str) -> Any:
                return getattr(grid, name)

            def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
                replies = list(grid.send_and_receive(messages, timeout=timeout))
                for r in replies:
                    if not r.has_error():
                        vec = r.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
                        curious.masked[r.metadata.src_node_id] = [bytes_to_ndarray(b) for b in vec]
                return replies

        return super().collect_masked_vectors_stage(Recording(), context, state)

    def _request(self, kind: str, state: WorkflowState) -> UnmaskAttempt:
        nodes, v = sorted(state.active_node_ids), self.victim
        others = [n for n in nodes if n != v]
        if kind == "active_and_dropped":
            return UnmaskAttempt({n: nodes for n in nodes}, {n: [v] for n in nodes})
        if kind == "outside_neighbours":
            return UnmaskAttempt({n: nodes + [OUTSIDER] for n in nodes}, {n: [] for n in nodes})
        if kind == "below_threshold":
            return UnmaskAttempt({n: [v] for n in nodes}, {n: others for n in nodes})
        if kind == "below_threshold_padded":  # passes Flower's len(active) >= threshold check
            return UnmaskAttempt({n: [v, v] for n in nodes}, {n: others for n in nodes})
        raise ValueError(kind)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        record = RESULTS[self.scenario]
        rd_shares: dict[int, set[bytes]] = {}
        sk_shares: dict[int, set[bytes]] = {}
        for number, kind in enumerate(self.attempts):
            attempt = self._request(kind, state)
            messages = [
                Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({
                    Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: attempt.active[n],
                    Key.DEAD_NODE_ID_LIST: attempt.dropped[n]})}),
                    dst_node_id=n, message_type="train", group_id=f"{self.scenario}-unmask-{number}")
                for n in sorted(state.active_node_ids)
            ]
            replies = list(grid.send_and_receive(messages))
            record.setdefault("replies", []).append(
                {r.metadata.src_node_id: (r.error.reason if r.has_error() else "shares") for r in replies})
            for r in replies:
                if r.has_error():
                    continue
                res = r.content.config_records[RECORD_KEY_CONFIGS]
                sent_active, sent_dropped = attempt.active[r.metadata.src_node_id], attempt.dropped[r.metadata.src_node_id]
                kinds = ["rd"] * len(sent_active) + ["sk"] * len(sent_dropped)
                for owner, share, which in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST], kinds):
                    (rd_shares if which == "rd" else sk_shares).setdefault(owner, set()).add(share)
        record["recovered"] = self._rebuild_victim(state, rd_shares, sk_shares)
        return False  # a curious center publishes nothing

    def _rebuild_victim(self, state: WorkflowState, rd: dict[int, set[bytes]], sk: dict[int, set[bytes]]) -> Any:
        v, t, mod = self.victim, state.threshold, state.mod_range
        if len(rd.get(v, ())) < t or v not in self.masked:
            return None
        shapes = [a.shape for a in self.masked[v]]
        vector = [a.astype(np.int64) - m for a, m in zip(self.masked[v], masks.full_strength_pseudo_rand_gen(
            combine_shares(sorted(rd[v])), mod, shapes))]
        pk1 = {n: bytes_to_public_key(keys[0]) for n, keys in state.nid_to_publickeys.items()}
        for other in sorted(state.active_node_ids - {v}):
            if len(sk.get(v, ())) >= t:
                key = generate_shared_key(bytes_to_private_key(combine_shares(sorted(sk[v]))), pk1[other])
            elif len(sk.get(other, ())) >= t:
                key = generate_shared_key(bytes_to_private_key(combine_shares(sorted(sk[other]))), pk1[v])
            else:
                return None
            pair = masks.full_strength_pseudo_rand_gen(key, mod, shapes)
            sign = -1 if v > other else 1  # the site added the pair mask when its id was larger
            vector = [a + sign * m for a, m in zip(vector, pair)]
        q_ratio, quantized = factor_extract(parameters_mod(vector, mod))
        values = dequantize(quantized, state.clipping_range, state.quantization_range)
        return [a * state.quantization_range / q_ratio for a in values]


def build_server_app(scenarios: list[tuple[str, int, Any]]) -> ServerApp:
    """`scenarios`: (name, group, workflow factory taking the group's node ids in partition order)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        groups = max(g for _, g, _ in scenarios) + 1
        while len(list(grid.get_node_ids())) < 3 * groups:
            time.sleep(0.1)
        asks = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in grid.get_node_ids()]
        pid_of = {r.metadata.src_node_id: int(r.content["site"]["pid"]) for r in grid.send_and_receive(asks)}
        node_of = {pid: node for node, pid in pid_of.items()}
        for number, (name, group, make_workflow) in enumerate(scenarios):
            nodes = [node_of[3 * group + i] for i in range(3)]
            RESULTS[name] = {"nodes": nodes}
            legacy = LegacyContext(context, strategy=GroupStrategy(nodes, grid, name))
            legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: number + 1})
            legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord([np.zeros(1, dtype=np.float32)])
            workflow = make_workflow(nodes)
            workflow(grid, legacy)
            RESULTS[name]["failure"] = getattr(workflow, "failure", None)

    return app


class KeySubstitutingSecAggPlus(CuriousSecAggPlus):
    """The key-substitution attack: at the share-keys stage the center gives every site, for every other site, a
    `pk2` whose private key it holds (it still forwards the sites' real signed keys: it cannot sign). Each
    pairwise channel then ends at the center: it decrypts every secret share in transit, re-encrypts it for its
    recipient, runs the round honestly to the end (the aggregate is right, nobody notices) and rebuilds the
    victim's update from its masked vector and the shares of its private seed and mask key."""

    def __init__(self, scenario: str, victim: int) -> None:
        super().__init__(scenario, victim, attempts=[])
        self.fake: dict[tuple[int, int], Any] = {}  # (site that sees it, site it poses as) -> private key
        self.rd: dict[int, set[bytes]] = {}
        self.sk: dict[int, set[bytes]] = {}

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        def swap(messages: list[Message]) -> None:
            for msg in messages:
                viewer, configs = msg.metadata.dst_node_id, msg.content.config_records[RECORD_KEY_CONFIGS]
                for name in [k for k in configs if k != Key.STAGE and int(k) != viewer]:
                    private, public = generate_key_pairs()
                    self.fake[(viewer, int(name))] = private
                    configs[name] = [configs[name][0], public_key_to_bytes(public)]

        def relay(replies: list[Message]) -> None:
            pk2 = {n: bytes_to_public_key(keys[1]) for n, keys in state.nid_to_publickeys.items()}
            for reply in replies:
                if reply.has_error():
                    continue
                src, res = reply.metadata.src_node_id, reply.content.config_records[RECORD_KEY_CONFIGS]
                relayed = []
                for dst, ciphertext in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST]):
                    plaintext = decrypt(generate_shared_key(self.fake[(src, dst)], pk2[src]), ciphertext)
                    owner, _, rd_share, sk_share = share_keys_plaintext_separate(plaintext)
                    self.rd.setdefault(owner, set()).add(rd_share)
                    self.sk.setdefault(owner, set()).add(sk_share)
                    relayed.append(encrypt(generate_shared_key(self.fake[(dst, src)], pk2[dst]), plaintext))
                res[Key.CIPHERTEXT_LIST] = relayed

        RESULTS[self.scenario]["substituted"] = True
        return AuthenticatedSecAggPlus.share_keys_stage(self, _GridHook(grid, on_send=swap, on_reply=relay), context, state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        done = AuthenticatedSecAggPlus.unmask_stage(self, grid, context, state)  # honest: the round ends normally
        RESULTS[self.scenario]["recovered"] = self._rebuild_victim(state, self.rd, self.sk)
        return done
