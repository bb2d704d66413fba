"""The knowledge folder as an attacker (or a careless colleague) shapes it, replayed through the
`deskmate` command as an operator runs it (the real CLI app, in this process): links that lead out of the folder to a secrets file,
a secrets folder, or a sidecar that would set a document's metadata. Nothing behind them may
become a document that `deskmate search` returns."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import Ran
from tests.support.cli import deskmate as run

SECRET = "hunter2-prod-database-password"
OUTSIDE_FILE = "symlink to a file outside the knowledge folder"


def deskmate(data: Path, *args: str, stdin: str | None = None) -> Ran:
    return run(args, cwd=data, stdin=stdin, DESKMATE_DATA_DIR=str(data), DESKMATE_GENERATOR_URL="echo://")


def knowledge_folder_with_links_out(tmp_path: Path) -> Path:
    """A small handbook whose `it` folder links to secrets kept beside the handbook."""
    (tmp_path / "prod.env").write_text(f"DB_PASSWORD={SECRET}\nSLACK_BOT_TOKEN=xoxb-1-2-3\n")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "root-passwords.md").write_text(
        f"# Root passwords\n\nThe production database password is {SECRET}.\n"
    )
    (tmp_path / "stolen.meta.yaml").write_text(f"title: The password is {SECRET}\n")
    it = tmp_path / "kb" / "it"
    it.mkdir(parents=True)
    (it / "vpn.md").write_text(
        "# Resetting your VPN password\n\nOpen the Northwind ID portal and choose Reset VPN password.\n"
    )
    (it / "wifi.md").write_text("# Office Wi-Fi\n\nJoin NW-Staff with your Northwind ID.\n")
    (it / "notes.txt").symlink_to("../../prod.env")
    (it / "vault").symlink_to("../../private", target_is_directory=True)
    (it / "wifi.md.meta.yaml").symlink_to("../../stolen.meta.yaml")
    return tmp_path / "kb"


def test_links_out_of_the_knowledge_folder_never_reach_search(tmp_path: Path) -> None:
    kb = knowledge_folder_with_links_out(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    ingested = deskmate(data, "ingest", str(kb))
    assert ingested.returncode == 1, ingested.stderr  # bad files are reported, the rest lands
    skipped = [" ".join(line.split()) for line in ingested.stderr.splitlines() if line.startswith("skipped")]
    assert skipped == [
        f"skipped it/notes.txt: {OUTSIDE_FILE}",
        "skipped it/vault: symlink to a folder outside the knowledge folder",
        f"skipped it/wifi.md: wifi.md.meta.yaml: {OUTSIDE_FILE}",
    ]
    assert ingested.stdout.startswith("1 added")

    questions = [
        "production database password DB_PASSWORD",
        "root passwords",
        "SLACK_BOT_TOKEN xoxb",
        "The password is",
    ]
    # One interactive search session asks them all (one process, one model load).
    found = deskmate(data, "search", "--k", "50", "--json", stdin="\n".join(questions) + "\n\n")
    assert found.returncode == 0, found.stderr
    results = [json.loads(line[line.index("{") :]) for line in found.stdout.splitlines() if "{" in line]
    assert [r["query"] for r in results] == questions
    for result in results:
        assert [h["doc_id"] for h in result["hits"]] == ["it/vpn.md"], result["query"]
        shown = json.dumps(result["hits"])  # the query is echoed back: look at passages only
        assert SECRET not in shown and "xoxb" not in shown


def test_a_link_given_as_the_file_to_ingest_is_not_read(tmp_path: Path) -> None:
    kb = knowledge_folder_with_links_out(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    ingested = deskmate(data, "ingest", str(kb / "it" / "notes.txt"))
    assert ingested.returncode == 1
    assert f"skipped notes.txt: {OUTSIDE_FILE}" in " ".join(ingested.stderr.split())
    assert ingested.stdout.startswith("0 added")
    stats = json.loads(deskmate(data, "kb", "stats", "--json").stdout)
    assert stats["documents"] == 0
