"""The README: its Python examples run, it stays short, and its relative links resolve."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_BYTES = 8192

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# [text](target) and ![alt](target); the target ends at whitespace or ')'
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def _text() -> str:
    return README.read_text(encoding="utf-8")


def _python_blocks() -> list[tuple[int, str]]:
    """(line number, source) of every ```python block, in order."""
    text = _text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _FENCE.finditer(text)]


def _uses_torch(source: str) -> bool:
    return re.search(r"^\s*(import torch|from torch[ .])", source, re.MULTILINE) is not None


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    heading = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def _links(markdown: str) -> list[str]:
    prose = _CODE.sub("", markdown)  # links inside code are not links
    return [m.group(1) for m in _LINK.finditer(prose)]


BLOCKS = _python_blocks()


def test_readme_has_python_examples() -> None:
    assert BLOCKS, "README.md has no ```python block"


@pytest.mark.parametrize(("line", "source"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line: int, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if _uses_torch(source):
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(source, f"README.md (block at line {line})", "exec"), namespace)
    # an example that makes vicinal warn teaches the wrong way
    ours = [w for w in caught if "vicinal" in str(w.message) or f"{Path('src', 'vicinal')}" in w.filename]
    assert not ours, f"README.md block at line {line} makes vicinal warn: {[str(w.message) for w in ours]}"


@pytest.mark.parametrize(
    ("line", "source"),
    [(line, src) for line, src in BLOCKS if not _uses_torch(src)],
    ids=[f"line{line}" for line, src in BLOCKS if not _uses_torch(src)],
)
def test_readme_numpy_block_runs_without_torch(line: int, source: str, tmp_path: Path) -> None:
    """The README says the core needs only NumPy: run such blocks with torch and Keras unimportable."""
    blocker = textwrap.dedent(
        """
        import sys

        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {"torch", "keras", "jax", "tensorflow"}:
                    raise ImportError(f"{name} is blocked: the README says this block needs only NumPy")
                return None

        sys.meta_path.insert(0, _Block())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker + "\n" + source],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"README.md block at line {line} failed without torch:\n{result.stderr}"


def test_readme_is_short() -> None:
    size = README.stat().st_size
    assert size <= MAX_BYTES, f"README.md is {size} bytes; keep it at most {MAX_BYTES} (move detail to docs/)"


# The README, and the results page that it sends readers to.
LINKED_DOCS = [README, *(ROOT / "docs" / name for name in ("results.md", "library.md", "migrating.md"))]


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=[str(d.relative_to(ROOT)) for d in LINKED_DOCS])
def test_relative_links_exist(doc: Path) -> None:
    """Every relative link (files, images, and #anchors of Markdown headings) resolves."""
    links = _links(doc.read_text(encoding="utf-8"))
    assert links, f"no links found in {doc.name}"
    broken = []
    for target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target}: {path} does not exist")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    assert not broken, f"broken links in {doc.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_library_guide_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/library.md's Python examples run as written."""
    text = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    assert blocks
    monkeypatch.chdir(tmp_path)
    for source in blocks:
        exec(compile(source, "docs/library.md", "exec"), {"__name__": "__docs__"})
