"""`python -m fedcare.flwr_cli <flwr arguments>`: Flower's `flwr` command, building compressed app bundles;
what `fedcare server` runs instead of the bare `flwr run`.

Flower 1.41 opens the app bundle's (FAB's) zip with ZIP_DEFLATED, but writes each file through a ZipInfo whose
own default, ZIP_STORED, wins (`flwr.cli.build.write_to_zip`): fedcare's bundle went out uncompressed, ~1 MB,
and a hospital's app process pulls it from its SuperNode with every message it answers, to check it against
the installed code (fedcare/clientapp_process.py). Deflated it is about a quarter of that. The bundle's hash
(taken over the bytes sent), Flower's content manifest and the hospitals' byte-for-byte comparison of the
files (shared/privacy/code_bundle.py) read the files, not how they are stored. It checks the installed flwr
version, since it replaces a module attribute.
"""

from __future__ import annotations

import sys
import zipfile

from fedcare.flower_processes import require_flower_version


def deflating_bundles() -> None:
    """Make Flower's FAB builder store every file deflated (idempotent)."""
    from flwr.cli import build

    require_flower_version("fedcare.flwr_cli")
    if getattr(build.write_to_zip, "deflates", False):
        return

    def write_to_zip(zipfile_obj: zipfile.ZipFile, filename: str, contents: bytes | str) -> zipfile.ZipFile:
        zip_info = zipfile.ZipInfo(filename)
        zip_info.date_time = build.FAB_DATE  # as Flower's: the same files give the same bundle and hash
        zip_info.compress_type = zipfile.ZIP_DEFLATED
        zipfile_obj.writestr(zip_info, contents)
        return zipfile_obj

    write_to_zip.deflates = True  # type: ignore[attr-defined]
    build.write_to_zip = write_to_zip


def main() -> None:
    deflating_bundles()
    from flwr.cli.app import app

    sys.argv[0] = "flwr"
    sys.exit(app())


if __name__ == "__main__":
    main()
