"""Authenticated SecAgg+ keys: each site signs its SecAgg+ public keys with its identity key, and checks every
peer's signed keys against the federation roster before it derives any shared secret.

Without this, SecAgg+ (Flower 1.41) cannot tell whose public keys a site received: a center that swaps the
`pk2` keys it forwards at the share-keys stage holds one end of every pairwise channel, decrypts the secret
shares in transit, re-encrypts them for their real recipients, and rebuilds any site's update while the round
finishes normally (tests/integration/test_secagg_curious_server.py runs that attack). The actively secure
variant of the protocol (Bonawitz et al., CCS 2017) signs the keys with each party's long-term key; here:

- setup reply: the site adds `signed_keys` = [statement, Ed25519 signature], the statement being the canonical
  JSON of {protocol, mask, run_id, round, node_id, site, pk1, pk2} (keys as SHA-256 hex), signed with the
  site's identity key (the key of its ledger and security log, born at the hospital);
- share-keys request: the center forwards each neighbour's [statement, signature] in the `fedcare_secagg_auth`
  record next to the keys; the site refuses the request, before Flower's mod derives anything, unless for
  every neighbour: the statement is signed by the roster key of the site it names, it binds this run, this
  round, the node id and the exact keys the center forwarded, no site appears twice, and the neighbour
  states the same protocol version and mask expansion as this site (`version_mismatch` otherwise);
- collect stage: every forwarded share must decrypt under its (now authenticated) pairwise key and name its
  source and this site, checked before the site trains, so a tampered share cannot cost budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_separate

from shared.privacy.key_statement import KeyStatement
from shared.privacy.roster import Roster
from shared.privacy.secagg_guard import GuardState, ProtocolViolation
from shared.privacy.whitelist import SIGNED_KEYS  # the setup reply's key: [statement, signature]

PROTOCOL_VERSION = "fedcare-secagg+/2"  # 1: guard + ChaCha20 masks, unsigned keys; 2: keys signed and checked
AUTH_RECORD = "fedcare_secagg_auth"  # the share-keys request's record: str(node id) -> [statement, signature]
ROSTER_REFUSED, VERSION_MISMATCH = "roster_refused", "version_mismatch"  # shared/privacy/reason_codes.py
_SecAggPlusState = import_module("flwr.client.mod.secure_aggregation.secaggplus_mod").SecAggPlusState


class PeerRefused(ProtocolViolation):
    """A neighbour's signed keys do not pass: `code` is the reason code the site sends, the text stays in its log."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def key_digest(key: bytes) -> str:
    return hashlib.sha256(bytes(key)).hexdigest()


def local_version() -> tuple[str, str]:
    """(protocol, mask expansion) this process runs."""
    from shared.privacy.secagg_masks import mask_algorithm  # patches Flower's masks: only where SecAgg+ runs

    return PROTOCOL_VERSION, mask_algorithm()


@dataclass
class KeyAuthenticator:
    """A site's side: sign its keys at setup, check its neighbours' at share keys and their shares at collect.

    Plugs into `shared.privacy.secagg_guard.secagg_guard(..., auth=...)`, whose refusal (logged, an error
    reply, silence for the rest of the run) it raises through PeerRefused / ProtocolViolation."""

    site: str
    identity_key: Ed25519PrivateKey
    roster: Callable[[], Roster]  # read at each share-keys stage (simulation: key files appear as sites start)
    roster_hint: str = ""  # appended to "not on the roster" (e.g. how to configure one)

    def statement(self, run_id: int, server_round: str, node_id: int, pk1: bytes, pk2: bytes) -> KeyStatement:
        protocol, mask = local_version()
        return KeyStatement(protocol, mask, int(run_id), str(server_round), int(node_id), self.site,
                            key_digest(pk1), key_digest(pk2))

    # -- hooks called by the guard ---------------------------------------------------------------
    def before(self, stage: str, msg: Message, context: Context, state: GuardState) -> None:
        configs = msg.content.config_records[RECORD_KEY_CONFIGS]
        if stage == Stage.SHARE_KEYS:
            auth = msg.content.config_records.get(AUTH_RECORD)
            self.check_peers(configs, auth, context.run_id, state)
        elif stage == Stage.COLLECT_MASKED_VECTORS:
            check_forwarded_shares(context, configs, msg.metadata.dst_node_id)

    def after(self, stage: str, msg: Message, context: Context, reply: Message) -> None:
        if stage != Stage.SETUP:
            return
        answer = reply.content.config_records[RECORD_KEY_CONFIGS]
        statement = self.statement(context.run_id, msg.metadata.group_id, msg.metadata.dst_node_id,
                                   bytes(answer[Key.PUBLIC_KEY_1]), bytes(answer[Key.PUBLIC_KEY_2])).to_bytes()
        answer[SIGNED_KEYS] = [statement, self.identity_key.sign(statement)]

    # -- the share-keys check -----------------------------------------------------------------
    def check_peers(self, configs: ConfigRecord, auth: ConfigRecord | None, run_id: int, state: GuardState) -> dict[int, str]:
        """node id -> site of every neighbour, or PeerRefused naming the first one that fails."""
        roster = self.roster()
        own_key = roster.identity_key(self.site)
        if own_key is None or own_key.public_bytes_raw() != self.identity_key.public_key().public_bytes_raw():
            raise PeerRefused(ROSTER_REFUSED, f"this site's own identity key is not the roster's key for {self.site!r}"
                                              f"{self.roster_hint}")
        protocol, mask = local_version()
        sites: dict[str, int] = {self.site: state.node_id}
        for nid in sorted(int(k) for k in configs if k != Key.STAGE):
            if nid == state.node_id:
                continue
            statement = self._verified(nid, configs[str(nid)], auth, roster)
            expected = {"run_id": int(run_id), "round": state.round, "node_id": nid,
                        "pk1": key_digest(configs[str(nid)][0]), "pk2": key_digest(configs[str(nid)][1])}
            for name, value in expected.items():
                if getattr(statement, name) != value:
                    what = "keys" if name in ("pk1", "pk2") else name
                    raise PeerRefused(ROSTER_REFUSED, f"site {statement.site!r} (node {nid}) signed other {what} than the "
                                                      f"center forwarded ({name}: substituted or replayed keys)")
            if statement.site in sites:
                raise PeerRefused(ROSTER_REFUSED, f"site {statement.site!r} appears twice (nodes {sites[statement.site]} "
                                                  f"and {nid})")
            sites[statement.site] = nid
            if (statement.protocol, statement.mask) != (protocol, mask):
                raise PeerRefused(VERSION_MISMATCH, f"site {statement.site!r} (node {nid}) runs SecAgg+ {statement.version()}; "
                                                    f"this site runs masks {mask!r}, protocol {protocol!r}")
        return {nid: site for site, nid in sites.items()}

    def _verified(self, nid: int, keys: Any, auth: ConfigRecord | None, roster: Roster) -> KeyStatement:
        signed = auth.get(str(nid)) if auth is not None else None
        if not (isinstance(signed, list) and len(signed) == 2 and all(isinstance(b, bytes) for b in signed)):
            raise PeerRefused(ROSTER_REFUSED, f"node {nid} comes without signed SecAgg+ keys (stock Flower, an older "
                                              "fedcare, or a center that strips the signatures)")
        try:
            statement = KeyStatement.from_bytes(signed[0])
        except (ValueError, UnicodeDecodeError) as err:
            raise PeerRefused(ROSTER_REFUSED, f"node {nid}: unreadable key statement ({err})") from None
        public_key = roster.identity_key(statement.site)
        if public_key is None:
            raise PeerRefused(ROSTER_REFUSED, f"site {statement.site!r} (node {nid}) is not on this site's roster"
                                              f"{self.roster_hint}")
        try:
            public_key.verify(signed[1], signed[0])
        except InvalidSignature:
            raise PeerRefused(ROSTER_REFUSED, f"site {statement.site!r} (node {nid}): the signature on its SecAgg+ keys "
                                              "does not verify with its roster key") from None
        return statement


def version_problem(signed: dict[int, Any]) -> str | None:
    """The center's check at setup (node id -> the `signed_keys` it replied, None when it sent none): one line
    naming the first site whose stated mask expansion or protocol differs from this process's, or None."""
    protocol, mask = local_version()
    for nid, value in sorted(signed.items()):
        if not (isinstance(value, list) and len(value) == 2):
            return (f"node {nid} sent unsigned SecAgg+ keys (stock Flower, or fedcare before {PROTOCOL_VERSION}); "
                    f"the federation runs masks {mask!r}, protocol {protocol!r}")
        try:
            statement = KeyStatement.from_bytes(value[0])
        except (ValueError, UnicodeDecodeError) as err:
            return f"node {nid} sent an unreadable key statement ({err})"
        if (statement.protocol, statement.mask) != (protocol, mask):
            return (f"site {statement.site!r} runs SecAgg+ {statement.version()}; the federation runs masks {mask!r}, "
                    f"protocol {protocol!r}")
    return None


def check_forwarded_shares(context: Context, configs: ConfigRecord, node_id: int) -> None:
    """Every share forwarded at the collect stage decrypts under its pairwise key and names its source and this
    node (Flower checks the same only after the site has trained); ProtocolViolation otherwise."""
    record = context.state.config_records.get(RECORD_KEY_STATE)
    state = _SecAggPlusState(**record) if record is not None else None
    pairwise = getattr(state, "ss2_dict", {}) or {}
    for src, ciphertext in zip(configs.get(Key.SOURCE_LIST, []), configs.get(Key.CIPHERTEXT_LIST, [])):
        if src not in pairwise:
            raise ProtocolViolation(f"a forwarded share names node {src}, with which this site shares no key")
        try:
            actual_src, dst, _, _ = share_keys_plaintext_separate(decrypt(pairwise[src], bytes(ciphertext)))
        except (InvalidToken, ValueError, TypeError):
            raise ProtocolViolation(f"the share forwarded from node {src} does not decrypt under the pairwise key "
                                    "(tampered in transit)") from None
        if (actual_src, dst) != (src, node_id):
            raise ProtocolViolation(f"the share forwarded from node {src} was written by node {actual_src} for node {dst}")
