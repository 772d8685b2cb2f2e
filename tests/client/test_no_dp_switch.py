"""The one way to train without DP is the documented config switch (privacy.enabled false, or a target
epsilon of .inf), and reproducible DP randomness only `privacy.reproducible_noise`: no environment
variable, no other construction of the trainer's settings, no other seed for the DP randomness."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# code that runs at a site: what trains, what decides what trains, and what it sends
TRAINING_CODE = [p for d in ("client", "shared/training", "shared/privacy", "shared/tasks", "shared/losses", "shared/models")
                 for p in sorted((REPO / d).rglob("*.py"))]


def _source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_the_environment_variable_switch_is_gone():
    for path in [*TRAINING_CODE, *sorted((REPO / "tests").rglob("*.py")), *sorted((REPO / "fedcare").rglob("*.py"))]:
        if path == Path(__file__):
            continue
        text = _source(path)
        assert "FEDCARE_TEST_ONLY" not in text and "NO_DP_NOISE" not in text, path


def test_training_code_reads_no_environment():
    for path in TRAINING_CODE:
        text = _source(path)
        assert "os.environ" not in text and "getenv" not in text, f"{path}: the environment must not change training"


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def test_the_only_dp_off_path_is_the_config_switch():
    builders = {path: _calls(ast.parse(_source(path)), "TrainSettings") for path in TRAINING_CODE}
    builders = {path: calls for path, calls in builders.items() if calls}
    site_worker = REPO / "client" / "site_worker.py"
    assert list(builders) == [site_worker] and len(builders[site_worker]) == 1, builders
    keywords = {k.arg: ast.unparse(k.value) for k in builders[site_worker][0].keywords}
    # noise only from the plan; no plan only when the config switch says DP is off
    assert keywords["noise_multiplier"] == "plan.noise_multiplier if plan is not None else None"
    assert keywords["dp_seed"] == "self._round_seed(server_round) if p.reproducible_noise else None"
    text = _source(site_worker)
    assert text.count("plan = self.plan(server_round) if dp else None") == 1 and text.count("dp = self.dp_enabled") == 1
    config = _source(REPO / "shared" / "config_schema.py")
    assert "return self.privacy.enabled and math.isfinite(self.site_target_epsilon(site))" in config


def test_dp_noise_and_sampling_never_use_the_global_generator():
    for name in ("dp_trainer.py", "fast_dp.py", "dp_rng.py"):
        tree = ast.parse(_source(REPO / "shared" / "training" / name))
        for call in _calls(tree, "normal_") + _calls(tree, "normal") + _calls(tree, "rand"):
            assert any(k.arg == "generator" for k in call.keywords), f"{name}:{call.lineno} draws without a generator"
    trainer = _source(REPO / "shared" / "training" / "dp_trainer.py")
    assert "generator=sampler" in trainer and "noise_generator=rng.noise" in trainer
