"""Hostile .pth files: each is refused with UnsafeCheckpointError (or FormatError for damaged
structure), and the marker file its payload would create never appears.

Each payload is also run with plain `pickle.loads` in a child process (a positive control),
to show that it really does run code when unpickled without an allowlist.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import llamaherd
from llamaherd.errors import FormatError, UnsafeCheckpointError
from llamaherd.formats.safe_pickle import load_state_dict


def raw_pickle(module: str, name: str, *args) -> bytes:
    """GLOBAL module.name, its args, REDUCE: a call, written opcode by opcode (nothing imported here)."""
    body = pickle.dumps(args, protocol=2)[2:-1]  # the args tuple, without PROTO and STOP
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + body + b"R."


def stack_global_pickle(module: str, name: str, arg: str) -> bytes:
    """The same call with protocol 4's STACK_GLOBAL opcode."""
    short = lambda text: b"\x8c" + bytes([len(text.encode())]) + text.encode()
    return b"\x80\x04" + short(module) + short(name) + b"\x93" + b"X" + len(arg.encode()).to_bytes(4, "little") \
        + arg.encode() + b"\x85R."


def zip_checkpoint(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def real_pickle_and_storage() -> tuple[bytes, dict[str, bytes]]:
    """data.pkl and storages of a genuine torch.save of one small tensor."""
    buf = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, buf)
    z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    prefix = z.namelist()[0].split("/")[0]
    storages = {n.split("/", 1)[1]: z.read(n) for n in z.namelist() if "/data/" in n}
    return z.read(f"{prefix}/data.pkl"), storages


def shell_payload(marker: Path) -> bytes:
    return raw_pickle("posix", "system", f"touch {marker}")


def python_payload(builtin: str, marker: Path) -> bytes:
    return raw_pickle("builtins", builtin, f"open({str(marker)!r}, 'w').close()")


def build_cases(tmp: Path, marker: Path) -> dict[str, tuple[Path, bytes | None]]:
    """name -> (hostile file, the pickle inside it when it has a runnable payload)."""
    cases: dict[str, tuple[Path, bytes | None]] = {}

    def add(name: str, pkl: bytes, runnable: bool = True, extra: dict[str, bytes] | None = None) -> None:
        members = {"archive/data.pkl": pkl, "archive/version": b"3\n", **(extra or {})}
        cases[name] = (zip_checkpoint(tmp / f"{name}.pth", members), pkl if runnable else None)

    add("os-system", shell_payload(marker))
    add("exec", python_payload("exec", marker))
    add("eval", python_payload("eval", marker))
    add("subprocess-call", raw_pickle("subprocess", "call", ["touch", str(marker)]))
    add("subprocess-popen", raw_pickle("subprocess", "Popen", ["touch", str(marker)]))
    add("os-system-protocol-0", b"cposix\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")
    add("stack-global-protocol-4", stack_global_pickle("posix", "system", f"touch {marker}"))
    # builtins.getattr(builtins.__import__('os'), 'system')('touch marker'), all with REDUCE
    getattr_chain = (
        b"\x80\x02cbuiltins\ngetattr\n"
        b"cbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R"
        b"X\x06\x00\x00\x00system\x86R"
        + b"X" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode() + b"\x85R."
    )
    add("builtins-getattr", getattr_chain)
    # Globals behind allowed-looking module names.
    add("torch-load", raw_pickle("torch", "load", str(tmp / "os-system.pth"), None, None, None, False), runnable=False)
    add("torch-utils-other-function", raw_pickle("torch._utils", "_import_dotted_name", "os.system"), runnable=False)
    add("collections-dotted-name", raw_pickle("collections", "OrderedDict.__class__.__subclasses__"), runnable=False)
    add("torch-storage-dotted", raw_pickle("torch", "HalfStorage.__init__.__globals__"), runnable=False)
    add("legacy-builtin-module", raw_pickle("__builtin__", "eval", f"open({str(marker)!r}, 'w').close()"))
    # A payload hidden in a tensor's backward-hooks argument, after a genuine tensor.
    real, storages = real_pickle_and_storage()
    hidden = real.replace(b"ccollections\nOrderedDict\n", b"cposix\nsystem\n", 1)  # first use is the dict itself
    add("payload-in-place-of-ordereddict", hidden, runnable=False,
        extra={f"archive/{k}": v for k, v in storages.items()})

    # Damaged or ambiguous archives.
    legacy = tmp / "legacy.pth"
    legacy.write_bytes(shell_payload(marker))  # torch's pre-1.6 format: a bare pickle stream
    cases["legacy-non-zip"] = (legacy, shell_payload(marker))
    add("case-twins", real, runnable=False,
        extra={"archive/data/0": storages["data/0"], "archive/DATA/0": b"\0" * len(storages["data/0"])})
    add("case-twin-pickles", real, runnable=False,
        extra={"archive/Data.pkl": shell_payload(marker), "archive/data/0": storages["data/0"]})
    cases["second-data-pkl"] = (zip_checkpoint(tmp / "second.pth", {
        "archive/data.pkl": real, "archive/data/0": storages["data/0"], "other/data.pkl": shell_payload(marker),
    }), None)
    add("storage-too-short", real, runnable=False, extra={"archive/data/0": storages["data/0"][:-4]})
    add("storage-too-long", real, runnable=False, extra={"archive/data/0": storages["data/0"] + b"\0" * 4})
    beyond = real.replace(b"K\x02K\x03\x86", b"K\x04K\x03\x86", 1)  # shape (4, 3) over 6 values
    assert beyond != real
    add("tensor-beyond-storage", beyond, runnable=False, extra={"archive/data/0": storages["data/0"]})
    # BUILD on the tensor: Tensor.__setstate__ would call set_() with the file's size and stride
    rebuilt = real.index(b"tq\x0cRq\r") + len(b"tq\x0cRq\r")
    add("build-on-tensor", real[:rebuilt] + b"(h\rK\x00K\x04\x85K\x01\x85tb" + real[rebuilt:], runnable=False,
        extra={f"archive/{k}": v for k, v in storages.items()})
    traversal = real.replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x00/", 1)
    add("storage-key-traversal", traversal, runnable=False, extra={"archive/data/0": storages["data/0"]})
    return cases


CASES = [
    "os-system", "exec", "eval", "subprocess-call", "subprocess-popen", "os-system-protocol-0",
    "stack-global-protocol-4", "builtins-getattr", "torch-load", "torch-utils-other-function",
    "collections-dotted-name", "torch-storage-dotted", "legacy-builtin-module", "payload-in-place-of-ordereddict",
    "legacy-non-zip", "case-twins", "case-twin-pickles", "second-data-pkl", "storage-too-short",
    "storage-too-long", "tensor-beyond-storage", "storage-key-traversal", "build-on-tensor",
]
CODE_PAYLOADS = {"os-system", "exec", "eval", "subprocess-call", "subprocess-popen", "os-system-protocol-0",
                 "stack-global-protocol-4", "builtins-getattr", "torch-load", "torch-utils-other-function",
                 "collections-dotted-name", "torch-storage-dotted", "legacy-builtin-module",
                 "payload-in-place-of-ordereddict", "legacy-non-zip", "build-on-tensor"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    marker = tmp / "PWNED"
    return build_cases(tmp, marker), marker


@pytest.mark.parametrize("case", CASES)
def test_hostile_checkpoint_is_refused(hostile, case):
    cases, marker = hostile
    path, _ = cases[case]
    expected = UnsafeCheckpointError if case in CODE_PAYLOADS else FormatError
    with pytest.raises(expected) as info:
        load_state_dict(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_refusal_names_the_forbidden_global(hostile):
    cases, _ = hostile
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):
        load_state_dict(cases["os-system"][0])
    with pytest.raises(UnsafeCheckpointError, match=r"subprocess\.Popen"):
        load_state_dict(cases["subprocess-popen"][0])


def test_hostile_shard_in_a_meta_folder_is_refused_by_load(hostile, tmp_path):
    cases, marker = hostile
    (tmp_path / "params.json").write_text('{"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 100}')
    (tmp_path / "consolidated.00.pth").write_bytes(cases["exec"][0].read_bytes())
    with pytest.raises(UnsafeCheckpointError, match="consolidated.00.pth"):
        llamaherd.load(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["os-system", "exec", "eval", "subprocess-call", "stack-global-protocol-4",
                                  "builtins-getattr", "os-system-protocol-0", "legacy-non-zip"])
def test_positive_control_the_payload_is_real(tmp_path, case):
    """Unpickled without an allowlist, the same bytes do run code."""
    own_marker = tmp_path / "PWNED"
    _, payload = build_cases(tmp_path, own_marker)[case]
    (tmp_path / "p.pkl").write_bytes(payload)
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())",
                    str(tmp_path / "p.pkl")], capture_output=True, timeout=30)
    assert own_marker.exists()


def test_genuine_torch_save_still_loads(tmp_path):
    state = {"a": torch.randn(3, 4).half(), "b": torch.randn(5).bfloat16(), "c": torch.nn.Parameter(torch.randn(2))}
    torch.save(state, tmp_path / "ok.pth")
    loaded, archive = load_state_dict(tmp_path / "ok.pth")
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v.detach())
    archive.close()


def test_no_code_path_calls_torch_load():
    root = Path(llamaherd.__file__).parent
    offenders = [p for p in root.rglob("*.py") if "torch.load(" in p.read_text() or "pickle.load(" in p.read_text()]
    assert offenders == []
