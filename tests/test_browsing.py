"""Browsing a photo catalog in Datasette: errors that are the client's answer 4xx, never 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasette.app import Datasette

from .test_plugin import make_datasette

rich = pytest.importorskip("rich", reason="rich is what turns Datasette's 404s into 500s; our dependencies install it")


@pytest.mark.asyncio
@pytest.mark.parametrize("path,status", [
    ("/photos/images/-/foo", 404), ("/a/b/c/d", 404), ("/photos/images/-/imgsearch/thumbnail/abc", 404),
    ("/no-such-database", 404), ("/no-such-database.json", 404), ("/photos/no_such_table", 404),
    ("/photos/images/-/imgsearch/thumbnail/99999", 404), ("/photos/images/99999", 404),
])
async def test_urls_that_match_nothing_answer_404_with_rich_installed(
    shared_catalog: Path, path: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = make_datasette(shared_catalog)
    await ds.invoke_startup()
    response = await ds.client.get(path)
    assert response.status_code == status, response.text[:200]
    if path.endswith(".json"):
        assert response.json()["ok"] is False
    assert "Traceback" not in capsys.readouterr().err  # no traceback flood for a client's mistake


@pytest.mark.asyncio
async def test_a_forbidden_page_is_a_403_with_rich_installed(shared_catalog: Path) -> None:
    ds = make_datasette(shared_catalog, {"allow": {"id": "alice"}})
    await ds.invoke_startup()
    for path in ("/photos", "/photos/images", "/-/versions.json"):
        assert (await ds.client.get(path)).status_code == 403, path


async def started(ds: Datasette) -> Datasette:
    await ds.invoke_startup()
    return ds
