"""atomic.py: a write that fails leaves the old file or folder as it was and no temporary behind."""
import pytest

from atomic import atomic_file, atomic_folder, atomic_path, write_text


def test_file_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "a.txt"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write("half of the new")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n" and [p.name for p in target.parent.iterdir()] == ["a.txt"]
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".a.txt.")
        tmp.write_bytes("новый\n".encode())
    assert target.read_text(encoding="utf-8") == "новый\n" and len(list(target.parent.iterdir())) == 1


def test_folder_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target) as tmp:
        (tmp / "config.json").write_text("{}")
    with pytest.raises(ValueError):
        with atomic_folder(target) as tmp:
            (tmp / "weights").write_text("partial")
            raise ValueError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    with atomic_folder(target) as tmp:
        (tmp / "weights").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["weights"]  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old copy left


def test_clean_up_puts_back_a_half_renamed_folder_and_removes_temporaries(tmp_path):
    from atomic import clean_up
    (tmp_path / ".ckpt-1.old").mkdir()  # killed between the two renames: ckpt-1 is missing
    (tmp_path / ".ckpt-1.old" / "w").write_text("intact")
    (tmp_path / "ckpt-2").mkdir()
    (tmp_path / ".ckpt-2.old").mkdir()  # killed after the second rename: ckpt-2 is in place
    (tmp_path / ".ckpt-3.tmp-ab12").mkdir()
    (tmp_path / ".log.jsonl.tmp-x9").write_text("half")
    assert clean_up(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-1", "ckpt-2"]
    assert (tmp_path / "ckpt-1" / "w").read_text() == "intact"
