"""Privacy core: accountants, noise planner, site keys, signed ledger, audit, outgoing whitelist.

Import the submodules directly (`from shared.privacy.planner import plan_noise_multiplier`); this
package imports nothing, so Flower's per-message processes load only what they use.
"""
