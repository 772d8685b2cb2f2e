"""The site's code digest and the app-bundle check: every file counts, __init__.py included, and a
bundle is read from memory, never extracted or imported."""

import io
import shutil
import sys
import tomllib
import zipfile

import pytest
from flwr.cli.build import build_fab_from_disk

from fedcare import clientapp_process
from fedcare.clientapp_process import CheckedBundles, bundle_check
from shared.privacy.code_bundle import (
    BUNDLE_PACKAGES,
    REPO_ROOT,
    BundleUnreadable,
    bundle_differences,
    fab_manifest,
    installed_digest,
    installed_manifest,
    manifest_digest,
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the app directory `fedcare server` ships (pyproject + the bundle's packages)."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    for package in BUNDLE_PACKAGES:
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_bundle_of_the_installed_code_is_identical_to_it(project):
    differences, bundle, installed = bundle_check(build_fab_from_disk(project))
    assert differences == [] and bundle == installed == installed_digest()


def test_pyproject_ships_exactly_the_bundle_packages():
    include = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["fab-include"]
    assert include == [f"{package}/**/*.py" for package in BUNDLE_PACKAGES]


@pytest.mark.parametrize("path", ["shared/__init__.py", "client/__init__.py", "shared/errors.py", "server/app.py"])
def test_one_changed_file_anywhere_is_a_difference(project, tmp_path, path):
    changed = tmp_path / "p"
    shutil.copytree(project, changed)
    (changed / path).write_text((changed / path).read_text() + "\nimport os  # payload\n")
    differences, bundle, installed = bundle_check(build_fab_from_disk(changed))
    assert differences == [f"changed: {path}"] and bundle != installed


def test_a_bundle_is_checked_once_per_content_and_a_changed_one_anew(project, tmp_path, monkeypatch):
    checks = []
    monkeypatch.setattr(clientapp_process, "bundle_check", lambda content, installed: checks.append(content) or
                        bundle_check(content, installed))
    bundles = CheckedBundles(installed_manifest())
    ours = build_fab_from_disk(project)
    changed = tmp_path / "p"
    shutil.copytree(project, changed)
    (changed / "client/app.py").write_text((changed / "client/app.py").read_text() + "\nimport os  # payload\n")
    hostile = build_fab_from_disk(changed)
    first = bundles.check(ours)
    assert first == bundle_check(ours) and first[0] == []
    first[0].append("a caller's change")  # never reaches the remembered result
    assert bundles.check(bytes(ours)) == bundle_check(ours)  # the same bytes: not compared again
    assert bundles.check(hostile)[0] == ["changed: client/app.py"]  # other bytes, whatever hash they claim
    assert bundles.check(hostile)[0] == ["changed: client/app.py"]  # refused again, from memory
    assert checks == [ours, hostile]
    for i in range(CheckedBundles.KEEP):  # a few bundles are remembered, the oldest forgotten first
        bundles.check(b"not a zip %d" % i)
    bundles.check(ours)
    assert checks[-1] == ours and len(bundles.results) == CheckedBundles.KEEP


def test_a_modified_deflated_bundle_is_refused_like_a_stored_one(project, tmp_path, monkeypatch):
    """`fedcare server` builds its bundle deflated (fedcare/flwr_cli.py); a hostile center may ship either kind:
    the check reads files, not their storage."""
    from flwr.cli import build

    from fedcare.flwr_cli import deflating_bundles

    changed = tmp_path / "p"
    shutil.copytree(project, changed)
    (changed / "shared/errors.py").write_text((changed / "shared/errors.py").read_text() + "\nimport os  # payload\n")
    stored = build_fab_from_disk(changed)
    monkeypatch.setattr(build, "write_to_zip", build.write_to_zip)  # Flower's builder back after the test
    deflating_bundles()
    deflated = build_fab_from_disk(changed)
    assert {i.compress_type for i in zipfile.ZipFile(io.BytesIO(deflated)).infolist()} == {zipfile.ZIP_DEFLATED}
    assert deflated != stored
    for fab in (stored, deflated):
        differences, bundle, installed = CheckedBundles(installed_manifest()).check(fab)
        assert differences == ["changed: shared/errors.py"] and bundle != installed
    assert bundle_check(stored)[1] == bundle_check(deflated)[1]  # the same files, the same digest


def test_added_and_missing_files_are_differences():
    installed = {"a.py": "1", "b.py": "2"}
    assert bundle_differences({"a.py": "1", "c.py": "3"}, installed) == ["added: c.py", "missing: b.py"]
    assert manifest_digest(installed) != manifest_digest({"a.py": "1"})


def test_a_bundle_is_read_in_memory_and_never_imported(tmp_path):
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr("pyproject.toml", "[project]\nname = 'x'\n")
        archive.writestr(".info/CONTENT", "")
        archive.writestr("client/evil.py", "raise SystemExit('imported')\n")
    before = set(sys.modules)
    assert fab_manifest(payload.getvalue()).keys() == {"client/evil.py"}  # metadata left out
    assert "client.evil" not in set(sys.modules) - before
    differences, _, _ = bundle_check(payload.getvalue())
    assert "added: client/evil.py" in differences and "missing: client/app.py" in differences
    with pytest.raises(BundleUnreadable):
        fab_manifest(b"not a zip")
    assert bundle_check(b"not a zip")[1] == "unreadable"


def test_the_manifest_covers_every_python_file_of_the_packages():
    on_disk = {p.relative_to(REPO_ROOT).as_posix() for package in BUNDLE_PACKAGES
               for p in (REPO_ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}
    assert set(installed_manifest()) == on_disk
