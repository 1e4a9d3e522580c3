"""Serve a catalog from a venv without torch, on its ONNX export, and search it through every door.

    python .ci/serve_without_torch.py CATALOG EXPORT_FOLDER IMAGE_FOLDER
"""

import asyncio
import importlib.util
import sys
from pathlib import Path

from datasette.app import Datasette
from datasette.version import __version__

catalog, export, images = (Path(argument) for argument in sys.argv[1:4])
assert importlib.util.find_spec("torch") is None, "this venv must not have torch"
assert importlib.util.find_spec("sentence_transformers") is None, "this venv must not have sentence-transformers"


async def main() -> None:
    config = {"plugins": {"datasette-imgsearch": {"onnx": str(export), "runtime": "onnx"}}}
    ds = Datasette([str(catalog)], **({"config": config} if __version__.startswith("1.") else {"metadata": config}))
    await ds.invoke_startup()
    name = catalog.stem
    data = (await ds.client.get(f"/{name}/images/-/imgsearch.json", params={"q": "a red circle", "k": "2"})).json()
    assert data["ok"] and all(row["name"].startswith("red-circle") for row in data["results"]), data  # two of each
    chinese = (await ds.client.get(f"/{name}/images/-/imgsearch.json", params={"q": "一个红色的圆", "k": "2"})).json()
    assert chinese["ok"] and chinese["terms"][0]["reader"] == "multilingual", chinese
    assert all(row["name"].startswith("red-circle") for row in chinese["results"]), chinese
    picture = sorted(images.iterdir())[0]
    uploaded = await ds.client.post(f"/{name}/images/-/imgsearch.json", files={"image": (picture.name, picture.read_bytes())})
    upload = uploaded.json()
    assert upload["ok"] and upload["results"][0]["path"] == picture.name, upload
    sql = "select json_extract(value, '$.id') as id from json_each(imgsearch('a blue square', 3))"
    rows = (await ds.client.get(f"/{name}.json", params={"sql": sql, "_shape": "array"}, follow_redirects=True)).json()
    assert len(rows) == 3, rows
    page = await ds.client.get(f"/{name}/images/-/imgsearch", params={"q": "something green"})
    assert page.status_code == 200 and 'class="thumb"' in page.text
    assert "torch" not in sys.modules
    print(f"served without torch on Datasette {__version__}: text (English and Chinese), upload, SQL and the page answered")


asyncio.run(main())
