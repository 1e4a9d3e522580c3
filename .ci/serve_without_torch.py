"""Serve a catalog from a venv without torch, on its ONNX export, and search it through every door.

    python .ci/serve_without_torch.py CATALOG EXPORT_FOLDER IMAGE_FOLDER
"""

import asyncio
import importlib.util
import json
import shutil
import sys
import tempfile
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
    damaged_export_is_named()
    made = json.loads((export / "export.json").read_text()).get("int8_text")
    graphs = f"8-bit text graphs ({made['weights']} weights)" if made else "float32 graphs"
    print(f"served without torch on Datasette {__version__} from an export with {graphs}: text (English and Chinese), "
          "upload, SQL and the page answered;"
          " an export copied without its weights is named, not taken for a missing one")


def damaged_export_is_named() -> None:
    """An export copied without a weights file: with no torch to fall back on, the error names the file."""
    from datasette_imgsearch.errors import ModelError
    from datasette_imgsearch.models.embedder import Embedder

    with tempfile.TemporaryDirectory() as folder:
        damaged = Path(folder) / "export"
        shutil.copytree(export, damaged)
        (damaged / "text.onnx.data").unlink()
        model = json.loads((export / "export.json").read_text())["model"]
        try:
            Embedder(model, "cpu", "fp32", runtime="auto", onnx=str(damaged))
        except ModelError as error:
            assert "text.onnx.data" in str(error) and "export-onnx" in str(error), error
        else:
            raise AssertionError("an export without its weights was used")


asyncio.run(main())
