"""Build the Teams app package (the zip an admin uploads) from manifest.json and the icons.

    python deploy/teams/package.py --app-id <Azure Bot app id> --domain deskmate.example.com

Writes deskmate-teams.zip next to this file. See README, "Install in Teams".
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def build(app_id: str, domain: str, out: Path) -> Path:
    """Fill in the app id and domain, check the result is JSON, zip it with the two icons."""
    if not APP_ID.match(app_id):
        raise SystemExit(f"the app id must be the Azure Bot's GUID, not {app_id!r}")
    domain = domain.removeprefix("https://").removeprefix("http://").strip("/")
    text = (HERE / "manifest.json").read_text().replace("{{APP_ID}}", app_id).replace("{{DOMAIN}}", domain)
    json.loads(text)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("manifest.json", text)
        for icon in ("color.png", "outline.png"):
            package.write(HERE / icon, icon)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app-id", required=True, help="The Azure Bot's Microsoft App ID (a GUID).")
    parser.add_argument("--domain", required=True, help="Where Deskmate is reachable, e.g. deskmate.example.com")
    parser.add_argument("--out", type=Path, default=HERE / "deskmate-teams.zip")
    args = parser.parse_args()
    print(f"written {build(args.app_id, args.domain, args.out)}")


if __name__ == "__main__":
    main()
