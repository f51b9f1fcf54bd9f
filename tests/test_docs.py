"""The documentation tells the truth: every Python snippet of the README and of docs/ runs
as written, every link leads somewhere, the mechanism table is the registry, the
contributing recipe makes a working mechanism, and the README stays a front page."""
import pathlib
import re
import textwrap

import pytest
import torch

import attnarena as aa

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs/contributing.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = {"pretrained.md": "transformers", "linearization.md": "transformers"}


def snippets(page: pathlib.Path) -> list[str]:
    """The page's ```python blocks, dedented (a block may sit in a list item)."""
    return [textwrap.dedent(block) for block in
            re.findall(r"^[ \t]*```python\n(.*?)^[ \t]*```", page.read_text(), re.M | re.S)]


def _runnable_pages():
    # the README has a test of its own; the contributing recipe registers a mechanism
    return [p for p in PAGES if snippets(p) and p.name not in ("README.md", "contributing.md")]


@pytest.mark.parametrize("page", _runnable_pages(), ids=lambda p: p.name)
def test_every_python_snippet_runs_as_written(page, capsys):
    """The page's snippets run in order in one namespace, in a folder of their own (what
    they write, `results/` included, lands there)."""
    if page.name in NEEDS:
        pytest.importorskip(NEEDS[page.name])
    namespace = {"__name__": "__snippet__"}
    for number, code in enumerate(snippets(page), start=1):
        try:
            exec(compile(code, f"{page.name}, snippet {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{page.name}, snippet {number} fails as written: "
                                 f"{type(error).__name__}: {error}\n{code}") from error


def test_the_readme_snippets_do_what_they_say(capsys):
    """The front page's three snippets: a block keeps the shape, the trained copy model
    generates after its prompt, the comparison prints one line per mechanism."""
    namespace = {"__name__": "__snippet__"}
    blocks = snippets(ROOT / "README.md")
    assert len(blocks) == 3
    for code in blocks:
        exec(code, namespace)
    assert namespace["y"].shape == (2, 1024, 256) and namespace["y_t"].shape == (2, 256)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].replace(" ", "").startswith("tensor([[3,1,4,1,5,9,2,6,16,")
    assert lines[0].count(",") == 16  # the prompt, then 8 generated tokens
    assert lines[1].startswith("test accuracy ") and lines[1].endswith(" after 200 steps")
    assert [line.split()[0] for line in lines[2:]] == ["softmax", "gla"]
    assert all(" ms ± " in line and line.endswith("MiB") for line in lines[2:])


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_somewhere(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue  # no network here: web links are not followed
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, (
                f"{page.name}: link to {target}: {file.name} has no heading #{anchor}")


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in sorted((ROOT / "docs").glob("*.md")):  # every page is reachable from it
        assert f"(docs/{page.name})" in readme, f"the README links no docs/{page.name}"
    image = re.search(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert image and (ROOT / image.group(1)).is_file()


def test_the_mechanism_table_is_the_registry():
    from attnarena.registry import mechanism_table

    page = (ROOT / "docs" / "mechanisms.md").read_text()
    begin = page.index("<!-- mechanisms:")
    begin = page.index("\n", begin) + 1
    end = page.index("<!-- end of mechanisms -->")
    assert page[begin:end].strip() == mechanism_table(), (
        "the mechanism table of docs/mechanisms.md differs from the registry: paste the "
        "output of `attnarena list --markdown` between its markers (docs/contributing.md, "
        "step 4)")


def test_the_contributing_recipe_makes_a_working_mechanism():
    """The recipe's code, as the page gives it, registers a mechanism whose every form
    agrees and which decodes like its full forward."""
    from attnarena import registry

    [code] = snippets(ROOT / "docs" / "contributing.md")
    try:
        exec(code, {"__name__": "__snippet__"})
        assert "my_linear" in aa.list_mixers()
        x = torch.randn(2, 9, 16)
        outputs = {}
        for form in ("parallel", "chunk", "recurrent"):
            torch.manual_seed(0)
            mixer = aa.create_mixer("my_linear", dim=16, heads=2, causal=True, form=form,
                                    chunk_size=4)
            outputs[form] = mixer(x)
        torch.testing.assert_close(outputs["chunk"], outputs["parallel"])
        torch.testing.assert_close(outputs["recurrent"], outputs["parallel"])
        state, steps = None, []
        for t in range(9):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
        torch.testing.assert_close(torch.stack(steps, 1), outputs["recurrent"])
    finally:
        registry._MIXERS.pop("my_linear", None)
