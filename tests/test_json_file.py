"""Broken JSON side files (params.json, config.json) give a FormatError naming the file."""

import pytest

import llamaherd
from llamaherd.formats.json_file import read_json_object

BROKEN = {"invalid JSON": b"{not json", "not an object": b"[1, 2, 3]", "invalid UTF-8": b'{"a": "\xff"}'}


@pytest.mark.parametrize("case", BROKEN)
def test_read_json_object_rejects(tmp_path, case):
    path = tmp_path / "config.json"
    path.write_bytes(BROKEN[case])
    with pytest.raises(llamaherd.FormatError, match=str(path)):
        read_json_object(path)


def test_read_json_object_reads_an_object(tmp_path):
    path = tmp_path / "params.json"
    path.write_text('{"dim": 64, "n_layers": 2}')
    assert read_json_object(path) == {"dim": 64, "n_layers": 2}


@pytest.mark.parametrize("layout", ["meta", "hf"])
def test_load_names_the_broken_file(tmp_path, layout):
    if layout == "meta":
        path = tmp_path / "params.json"
        (tmp_path / "consolidated.00.pth").write_bytes(b"")
    else:
        path = tmp_path / "config.json"
        (tmp_path / "model.safetensors").write_bytes(b"")
    path.write_bytes(b"[]")
    with pytest.raises(llamaherd.FormatError, match=str(path)):
        llamaherd.load(tmp_path)
