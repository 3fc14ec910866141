"""The file helpers behave the same on local disk and on a real S3 server."""

from __future__ import annotations

import os

import pytest

from paralab.platform.storage import LocalStorage, Storage, StorageError, join


def test_write_read_exists(storage: Storage):
    assert not storage.exists("a/b.txt")
    storage.write_bytes("a/b.txt", b"hello")
    assert storage.read_bytes("a/b.txt") == b"hello"
    assert storage.exists("a/b.txt")
    assert storage.exists("a"), "a directory with a file in it exists"
    assert not storage.exists("a/b")
    assert not storage.exists("a/b.tx"), "a key is not a prefix match"


def test_overwrite_replaces_whole_content(storage: Storage):
    storage.write_bytes("f.bin", b"x" * 100_000)
    storage.write_bytes("f.bin", b"short")
    assert storage.read_bytes("f.bin") == b"short"
    assert storage.list() == ["f.bin"], "no temporary files are left beside it"


def test_empty_file_roundtrip(storage: Storage):
    storage.write_bytes("empty", b"")
    assert storage.read_bytes("empty") == b""
    assert storage.exists("empty")


def test_read_missing_raises_file_not_found(storage: Storage):
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.read_bytes("dir/nope")


def test_list_recursive_and_children(storage: Storage):
    for key in ["run/ckpt_2/model.pt", "run/ckpt_1/model.pt", "run/config.yaml", "runx/z"]:
        storage.write_bytes(key, key.encode())
    assert storage.list("run") == ["run/ckpt_1/model.pt", "run/ckpt_2/model.pt",
                                   "run/config.yaml"]
    assert storage.list("run", recursive=False) == ["run/ckpt_1/", "run/ckpt_2/",
                                                    "run/config.yaml"]
    assert storage.list("", recursive=False) == ["run/", "runx/"]
    assert storage.list() == ["run/ckpt_1/model.pt", "run/ckpt_2/model.pt", "run/config.yaml",
                              "runx/z"]
    assert storage.list("missing") == []


def test_upload_download_dir_roundtrip(storage: Storage, tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    files = {"a.txt": b"a", "sub/b.bin": os.urandom(70_000), "sub/deeper/c": b""}
    for rel, data in files.items():
        (src / rel).write_bytes(data)

    keys = storage.upload_dir(src, "ckpt/step_3")
    assert sorted(keys) == sorted(f"ckpt/step_3/{rel}" for rel in files)
    assert storage.list("ckpt") == sorted(keys)

    dest = tmp_path / "dest"
    paths = storage.download_dir("ckpt/step_3", dest)
    assert sorted(p.relative_to(dest).as_posix() for p in paths) == sorted(files)
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data, rel


def test_delete_file_and_dir(storage: Storage):
    for key in ["d/1", "d/e/2", "d/e/3", "keep"]:
        storage.write_bytes(key, b"x")
    assert storage.delete("d/1") == 1
    assert not storage.exists("d/1")
    assert storage.delete("d") == 2
    assert not storage.exists("d")
    assert storage.delete("d") == 0, "deleting what is gone is a no-op"
    assert storage.list() == ["keep"]
    with pytest.raises(ValueError, match="root"):
        storage.delete("")


@pytest.mark.s3
def test_a_delete_the_server_partly_refuses_is_an_error(s3_storage: Storage):
    """DeleteObjects answers 200 with per-key Errors; a refused key must not count as gone."""
    for key in ["d/1", "d/2"]:
        s3_storage.write_bytes(key, b"x")
    client = s3_storage.client
    real = client.delete_objects

    def refuse_the_first(*, Bucket, Delete):  # noqa: N803 - boto3's argument names
        refused, *rest = Delete["Objects"]
        real(Bucket=Bucket, Delete={**Delete, "Objects": rest})
        return {"Errors": [{"Key": refused["Key"], "Code": "AccessDenied", "Message": "Access Denied."}]}

    client.delete_objects = refuse_the_first
    with pytest.raises(StorageError, match=r"refused to delete 1 of 2 .*d/1: AccessDenied") as err:
        s3_storage.delete("d")
    assert err.value.reason == "denied"
    assert s3_storage.list("d") == ["d/1"], "the refused object is still there, and said so"


def test_child_is_rooted_at_prefix(storage: Storage):
    run = storage.child("runs", "3f2a")
    run.write_bytes("config.yaml", b"cfg")
    assert storage.read_bytes("runs/3f2a/config.yaml") == b"cfg"
    assert run.list() == ["config.yaml"]
    assert run.uri == storage.uri_of("runs/3f2a")
    assert run.uri_of("config.yaml").endswith("runs/3f2a/config.yaml")


@pytest.mark.parametrize(("parts", "key"), [
    (("a", "b"), "a/b"),
    (("a/", "/b/", "", "c"), "a/b/c"),
    (("./a//b",), "a/b"),
    ((), ""),
], ids=["plain", "slashes", "dots", "empty"])
def test_join(parts, key):
    assert join(*parts) == key


def test_storage_pickles_for_ray_workers(storage: Storage):
    import pickle

    storage.write_bytes("k", b"before")
    copy = pickle.loads(pickle.dumps(storage))
    copy.write_bytes("k", b"after")
    assert storage.read_bytes("k") == b"after"


def test_join_rejects_escaping_the_root():
    with pytest.raises(ValueError, match=r"\.\."):
        join("a", "../../etc")


def test_local_write_is_atomic_when_interrupted(local_storage: LocalStorage, monkeypatch):
    local_storage.write_bytes("state.json", b"old")

    def crash(src, dst):
        raise OSError("disk died mid-rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="mid-rename"):
        local_storage.write_bytes("state.json", b"new content")
    monkeypatch.undo()
    assert local_storage.read_bytes("state.json") == b"old"
    assert sorted(p.name for p in local_storage.root.iterdir()) == ["state.json"]


def test_local_ray_storage_is_absolute_path(local_storage: LocalStorage):
    path, fs = local_storage.ray_storage()
    assert fs is None
    assert path == str(local_storage.root) and os.path.isabs(path)
