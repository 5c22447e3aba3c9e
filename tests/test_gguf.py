"""Our GGUF reader against the gguf package's, on a real file (hostile files: test_gguf_malformed.py)."""

from llamaherd.formats.gguf import GGUFFile


def test_metadata_matches_gguf_package(smollm2_path):
    """Our reader and the gguf package's reader agree on every key and tensor of a real file."""
    import gguf
    import numpy as np

    theirs = gguf.GGUFReader(smollm2_path)
    with GGUFFile(smollm2_path) as ours:
        assert set(ours.metadata) == {f.name for f in theirs.fields.values() if not f.name.startswith("GGUF.")}
        for field in theirs.fields.values():
            if field.name.startswith("GGUF."):
                continue
            value = ours.metadata[field.name]
            expected = field.contents()
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, np.asarray(expected))
            else:
                assert value == expected, field.name
        for t in theirs.tensors:
            info = ours.tensors[t.name]
            assert info.shape == tuple(reversed([int(d) for d in t.shape]))
            assert info.ggml_type == int(t.tensor_type)
            assert info.offset == t.data_offset
            assert info.nbytes == t.n_bytes
