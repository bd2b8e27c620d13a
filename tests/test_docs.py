"""Every file the docs name is in the repository.

A reader follows the docs to a results file, a flagfile or a page; one that was never
committed (a run's logs, gitignored) is found here rather than by that reader. Whether a
number was copied faithfully is not checked here: the pages hold thousands of numbers, so a
number found on one proves little.
"""

import re

from conftest import REPO

DOCS = [REPO / "README.md", REPO / "BUILD.md", *sorted((REPO / "docs").glob("*.md"))]
TOP_FOLDERS = ("docs", "sweeps", "flags", "bench", "tests", "tsynd_tf", "saved_models", ".ci")
# A repository path in backticks (`sweeps/comparison/results.jsonl`) or a Markdown link.
PATH_IN_BACKTICKS = re.compile(r"`((?:%s)/[^`\s:]*)`" % "|".join(map(re.escape, TOP_FOLDERS)))
LINK = re.compile(r"\]\(([\w./-]+)\)")


def named_paths(doc) -> set[str]:
    text = doc.read_text()
    backticked = {p for p in PATH_IN_BACKTICKS.findall(text) if not re.search(r"[*{<]", p)}
    linked = {(doc.parent / p).resolve().relative_to(REPO.resolve()).as_posix()
              for p in LINK.findall(text) if not p.startswith("http")}
    return backticked | linked


def test_every_repository_path_the_docs_name_exists():
    missing = [(doc.name, path) for doc in DOCS for path in sorted(named_paths(doc))
               if not (REPO / path).exists()]
    assert named_paths(REPO / "README.md"), "the README names no file at all?"
    assert missing == []
