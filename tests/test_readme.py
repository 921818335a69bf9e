"""Docs that run: every ```python block of README.md is executed (tiny sizes, glyphs data).

A block preceded by ``<!-- not-run: reason -->`` is skipped (it needs downloaded data; keep these
few); a block preceded by ``<!-- run-with-previous: ... -->`` runs right after the block before
it (it reads what that one wrote). Each block runs in a fresh namespace, as a user would paste
it, inside one temporary working folder.
"""
import os
import re

import pytest

import ccp

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
_BLOCK = re.compile(r"(?:<!--\s*(?P<marker>[\w-]+)[^>]*-->\s*\n)?```python\n(?P<code>.*?)^```",
                    re.DOTALL | re.MULTILINE)
MAX_NOT_RUN = 3


def readme_blocks():
    """``[(line, marker or None, code)]`` of README's python blocks, in order."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return [(text.count("\n", 0, m.start("code")) + 1, m.group("marker"), m.group("code"))
            for m in _BLOCK.finditer(text)]


def runnable_groups():
    """The blocks that run, grouped: a run-with-previous block joins the group before it."""
    groups = []
    for line, marker, code in readme_blocks():
        if marker == "not-run":
            continue
        if marker == "run-with-previous":
            groups[-1].append((line, code))
        else:
            groups.append([(line, code)])
    return groups


def test_blocks_are_marked_with_known_markers_and_few_are_not_run():
    markers = [marker for _, marker, _ in readme_blocks()]
    assert set(markers) <= {None, "not-run", "run-with-previous"}, markers
    assert markers.count("not-run") <= MAX_NOT_RUN
    assert "ccp.models.MetricModel" in "".join(code for _, _, code in readme_blocks())


def _check(namespace):
    """What a block that trains must have done (beyond not raising)."""
    projection = namespace.get("projection")
    if "model" in namespace and isinstance(projection, ccp.projection.AlternatingProjection) \
            and isinstance(namespace["model"], ccp.models.MetricModel):
        # fit initialized the proxies by greedy k-center (SPEC §5.4) and projected (§5.3)
        assert bool(projection.proxies_initialized.numpy())
        assert projection.get_state()["instance"] >= 1
    result = namespace.get("result")
    if isinstance(result, dict) and "projections" in result:  # the Trainer's fit
        assert result["epochs"] >= 1 and len(result["projections"]) >= 1


@pytest.mark.slow  # the glyphs snippets train for 40-60 steps each
@pytest.mark.parametrize("group", runnable_groups(),
                         ids=lambda group: f"README-line-{group[0][0]}")
def test_readme_block_runs(group, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.getbasetemp())
    for line, code in group:
        namespace = {"__name__": f"readme_line_{line}"}
        exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102
        _check(namespace)
