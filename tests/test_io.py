"""io.py: atomic writes and output paths."""

import pytest

from bertmath import io
from bertmath.errors import OutputError


def test_a_failed_atomic_write_leaves_the_target_and_no_temporary_file(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "inside").write_text("kept")
    with pytest.raises(IsADirectoryError):
        io.atomic_write_bytes(tmp_path / "taken", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (tmp_path / "taken" / "inside").read_text() == "kept"


def test_check_output_refuses_the_wrong_kind_and_paths_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    assert io.check_output(tmp_path / "new" / "deeper" / "a.png") == tmp_path / "new" / "deeper" / "a.png"
    assert io.check_output(tmp_path / "file") == tmp_path / "file"
    assert io.check_output(tmp_path / "dir", directory=True) == tmp_path / "dir"
    for path, directory, message in [(tmp_path / "dir", False, "is a directory"), (tmp_path / "file", True, "is a file"),
                                     (tmp_path / "file" / "a.png", False, "file is a file"),
                                     (tmp_path / "file" / "sub", True, "file is a file")]:
        with pytest.raises(OutputError, match=message):
            io.check_output(path, directory)
