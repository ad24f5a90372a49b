"""Checkpoints on S3 (moto's server on loopback, tests/s3server.py): a whole study through the CLI,
a save killed mid-upload, the read-through cache, and the study-file keys that configure them."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch

from hpsearch.checkpoint import MARKER, FsspecStore, ReadCache
from hpsearch.checkpoint.format import MANIFEST
from hpsearch.cli import main
from hpsearch.config import load_study_file
from hpsearch.errors import CheckpointError, CheckpointNotFound, StudyFileError
from hpsearch.lineage import open_lineage
from hpsearch.search.session import fingerprint
from s3server import KEY, S3, SECRET, s3  # noqa: F401  (the session fixture)
from studyutil import write_study

HPARAMS = {"lr": 1e-2, "dropout": 0.1, "batch_size": 64, "weight_decay": 1e-4, "hidden": 64}


def _key_prefix(url: str) -> str:
    """s3://bucket/a/b -> a/b/ (the bucket's key prefix)."""
    return url.split("://", 1)[1].split("/", 1)[1].rstrip("/") + "/"


def _no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata server


# -- a whole study --------------------------------------------------------------------------


def test_a_study_commits_loads_verifies_and_collects_its_checkpoints_on_s3(
    s3: S3,  # noqa: F811
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _no_aws_env(monkeypatch)  # the study file's storage_options alone reach the server
    url = s3.url("study")
    cache = str(tmp_path / "cache")
    path = write_study(
        tmp_path,
        checkpoints={
            "dir": url,
            "every": 0.5,
            "keep_best": 2,
            "storage_options": s3.storage_options,
            "cache_dir": cache,
        },
        warmup={"epochs": 1, "hparams": HPARAMS},
        trials={"n": 4, "epochs": 0.5, "eval_every": 0.25},
    )
    assert main(["run", path, "--trials", "2"]) == 0
    # a second run is a new session: it loads the base from S3 (through the cache) to fork
    assert main(["run", path]) == 0
    out = capsys.readouterr().out
    assert "study tiny: 4 finished trials" in out
    root = f"{url}/tiny"
    assert f"best checkpoint: {root}/ck-" in out

    settings = load_study_file(path)
    lineage = open_lineage(settings.storage, "tiny")
    try:
        base = [r.id for r in lineage.checkpoints(kinds=("base",), statuses=("committed",))]
        assert len(base) == 1
        assert sorted(os.listdir(os.path.join(cache, os.listdir(cache)[0], base[0]))) == [
            "model.safetensors",
            "optimizer.safetensors",
            "state.json",
        ]
        assert main(["verify", path]) == 0
        committed = sorted(r.id for r in lineage.checkpoints(statuses=("committed",)))
        assert f"{len(committed)} checkpoints verified, 0 failed" in capsys.readouterr().out
        assert main(["gc", path]) == 0
        after = sorted(r.id for r in lineage.checkpoints(statuses=("committed",)))
    finally:
        lineage.close()
    assert base[0] in after and len(after) >= 2  # the base and the best finals
    store = FsspecStore(root, **s3.storage_options)
    assert [i.id for i in sorted(store.list(), key=lambda i: i.id)] == after
    expected = {f"{_key_prefix(root)}{MARKER}"} | {
        f"{_key_prefix(root)}{i.id}/{name}" for i in store.list() for name in [*i.files, MANIFEST]
    }
    assert set(s3.keys(_key_prefix(root))) == expected  # exactly the tree's checkpoints
    assert store.leftovers() == []


def test_study_file_secrets_stay_out_of_the_fingerprint_and_repr(s3: S3, tmp_path: Any) -> None:  # noqa: F811
    path = write_study(
        tmp_path, checkpoints={"dir": s3.url(), "storage_options": s3.storage_options}
    )
    settings = load_study_file(path)
    assert settings.checkpoints.storage_options == s3.storage_options
    assert SECRET not in json.dumps(fingerprint(settings))
    assert SECRET not in repr(settings) and KEY not in repr(settings)


# -- a save killed mid-upload ---------------------------------------------------------------

# A child that saves a checkpoint whose optimizer file (16 MiB) goes up as a multipart upload
# in 5 MiB parts; after the first part is up, and once the model file's object exists, it says
# so and waits to be killed: the kill lands mid-PUT, between data objects and the manifest.
SAVER = textwrap.dedent(
    """
    import sys, time, torch, s3fs.core
    from hpsearch.checkpoint import FsspecStore

    store = FsspecStore(sys.argv[1], default_block_size=5 << 20)
    ckpt_id = store.new_id()
    model = f"{store.root}/{ckpt_id}/model.safetensors"
    real = s3fs.core.S3File._upload_chunk

    def upload_chunk(self, final=False):
        out = real(self, final)
        if self.path.endswith("optimizer.safetensors") and self.parts and not final:
            while not store.fs.isfile(model):  # its upload runs in a thread of the save
                time.sleep(0.01)
            print(ckpt_id, flush=True)
            time.sleep(600)
        return out

    s3fs.core.S3File._upload_chunk = upload_chunk
    tensors = {"model": {"w": torch.ones(1000)}, "optimizer": {"m": torch.ones(4 << 20)}}
    store.save(tensors, {}, ckpt_id=ckpt_id)
    print("not killed", flush=True)
    """
)


def test_a_save_killed_mid_upload_is_never_listed_or_loaded_and_is_cleaned(
    s3: S3,  # noqa: F811
) -> None:
    url = s3.url("torn")
    store = FsspecStore(url)
    keep = store.save({"model": {"w": torch.zeros(10)}}, {"keep": 1})
    child = subprocess.Popen(
        [sys.executable, "-c", SAVER, url], stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    try:
        assert child.stdout is not None
        # the event: mid-PUT, data objects up (the limit only keeps a broken child from
        # hanging the suite)
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready, "the saver never reached its mid-upload point"
        torn = child.stdout.readline().strip()
        assert torn.startswith("ck-"), torn
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    prefix = _key_prefix(url)
    assert f"{prefix}{torn}/model.safetensors" in s3.keys(prefix)
    assert f"{prefix}{torn}/{MANIFEST}" not in s3.keys(prefix)
    uploads = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{prefix}{torn}/")
    assert [u["Key"] for u in uploads.get("Uploads", [])] == [
        f"{prefix}{torn}/optimizer.safetensors"
    ]

    for s in (store, FsspecStore(url)):
        assert not s.exists(torn) and [i.id for i in s.list()] == [keep.id]
        for call in (s.load, s.info, s.verify):
            with pytest.raises(CheckpointNotFound):
                call(torn)
    # Another worker's upload in flight looks the same, so a fresh one is left alone ...
    assert store.leftovers() == [] and store.clean_leftovers() == 0
    # ... until it is older than the grace (here: at once)
    collector = FsspecStore(url, leftover_grace_s=0)
    assert collector.leftovers() == [torn]
    assert collector.clean_leftovers() > 0
    assert collector.leftovers() == []
    assert set(s3.keys(prefix)) == {f"{prefix}{MARKER}"} | {
        f"{prefix}{keep.id}/{n}" for n in [*keep.files, MANIFEST]
    }
    uploads = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{prefix}{torn}/")
    assert uploads.get("Uploads", []) == []  # the parts it left are aborted too
    assert store.load(keep.id).state == {"keep": 1}


def test_a_delete_cut_short_is_cleaned_at_once(s3: S3) -> None:  # noqa: F811
    store = FsspecStore(s3.url("del"))  # the default grace
    doomed = store.save({"model": {"w": torch.ones(3)}}, {})
    store.backend.uncommit(doomed.id)  # a collector killed right after the first step
    assert not store.exists(doomed.id) and store.leftovers() == [doomed.id]
    assert store.clean_leftovers() > 0 and store.leftovers() == []


# -- the read-through cache -----------------------------------------------------------------


def test_n_loads_of_one_parent_read_it_from_s3_once(s3: S3, tmp_path: Any) -> None:  # noqa: F811
    url = s3.url("cache")
    parent = FsspecStore(url).save(
        {"model": {"w": torch.randn(300, 100)}, "optimizer": {"m": torch.randn(300, 100)}},
        {"step": 7},
    )
    files = len(parent.files)  # model, optimizer, state
    cached = FsspecStore(url, cache=ReadCache(str(tmp_path / "c")))
    plain = FsspecStore(url)
    loads = [cached.load(parent.id) for _ in range(5)]
    for _ in range(5):
        plain.load(parent.id)
    assert (cached.reads.backend, cached.reads.cache) == (files, 4 * files)
    assert (plain.reads.backend, plain.reads.cache) == (5 * files, 0)
    for ck in loads:
        assert ck.tensors["model"]["w"].equal(loads[0].tensors["model"]["w"])
        assert ck.state == {"step": 7}
    # another worker on this machine (another store object on the same cache): no download
    other = FsspecStore(url, cache=ReadCache(str(tmp_path / "c")))
    assert other.load(parent.id).tensors["optimizer"]["m"].equal(loads[0].tensors["optimizer"]["m"])
    assert other.reads.backend == 0
    # verify checks the store itself, not the copy
    cached.verify(parent.id)
    assert cached.reads.backend == 2 * files
    # a delete through the store drops the cached copy; the load fails as on S3
    cached.delete(parent.id)
    assert not os.path.exists(tmp_path / "c" / parent.id)
    with pytest.raises(CheckpointNotFound):
        other.load(parent.id)


# -- credentials and endpoint ---------------------------------------------------------------


def test_the_generic_aws_endpoint_variable_is_honoured(
    s3: S3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)  # botocore: every service's endpoint
    store = FsspecStore(s3.url("env"), skip_instance_cache=True)
    info = store.save({"model": {"w": torch.ones(2)}}, {"via": "AWS_ENDPOINT_URL"})
    assert store.load(info.id).state == {"via": "AWS_ENDPOINT_URL"}


def test_storage_options_alone_reach_the_store(
    s3: S3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_aws_env(monkeypatch)
    store = FsspecStore(s3.url("opts"), skip_instance_cache=True, **s3.storage_options)
    info = store.save({"model": {"w": torch.ones(2)}}, {"via": "storage_options"})
    assert store.load(info.id).state == {"via": "storage_options"}


# -- the study-file keys --------------------------------------------------------------------


def test_study_file_cache_defaults(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("s3fs", reason="s3:// study files need s3fs")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    remote = load_study_file(write_study(tmp_path / "a", checkpoints={"dir": "s3://b/p"}))
    assert remote.checkpoints.cache_dir == str(tmp_path / "xdg" / "hpsearch")
    assert remote.checkpoints.cache_max_bytes == 20 << 30
    assert remote.checkpoints.storage_options == {}
    local = load_study_file(write_study(tmp_path / "b", checkpoints={"dir": "ck"}))
    assert local.checkpoints.cache_dir is None  # a local directory is not cached
    off = load_study_file(
        write_study(tmp_path / "c", checkpoints={"dir": "s3://b/p", "cache_dir": False})
    )
    assert off.checkpoints.cache_dir is None
    chosen = load_study_file(
        write_study(
            tmp_path / "d",
            checkpoints={"dir": "s3://b/p", "cache_dir": "cache", "cache_max_gib": 0.5},
        )
    )
    assert chosen.checkpoints.cache_dir == str(tmp_path / "d" / "cache")
    assert chosen.checkpoints.cache_max_bytes == 1 << 29


@pytest.mark.parametrize(
    ("checkpoints", "key", "words"),
    [
        ({"dir": "s3://b/p", "storage_options": "hunter2"}, "storage_options", "mapping"),
        ({"dir": "s3://b/p", "storage_options": [1]}, "storage_options", "got a list"),
        (
            {"dir": "s3://b/p", "storage_options": {"a-b": "hunter2"}},
            "storage_options",
            "identifiers",
        ),
        (
            {"dir": "ck", "storage_options": {"key": "hunter2"}},
            "storage_options",
            "local directory",
        ),
        ({"dir": "s3://b/p", "cache_dir": "s3://b/c"}, "cache_dir", "local directory"),
        ({"dir": "s3://b/p", "cache_dir": 3}, "cache_dir", "non-empty string"),
        ({"dir": "s3://b/p", "cache_max_gib": 0}, "cache_max_gib", "> 0"),
    ],
)
def test_study_file_errors_name_the_key(
    tmp_path: Any, checkpoints: dict[str, Any], key: str, words: str
) -> None:
    pytest.importorskip("s3fs", reason="s3:// study files need s3fs")
    with pytest.raises(StudyFileError) as e:
        load_study_file(write_study(tmp_path, checkpoints=checkpoints))
    assert e.value.key == f"checkpoints.{key}"
    assert words in str(e.value)
    assert "hunter2" not in str(e.value)  # a value may be a credential: never shown


def test_an_unreachable_endpoint_is_one_clear_error(tmp_path: Any) -> None:
    pytest.importorskip("s3fs", reason="s3:// needs s3fs")
    opts = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "hunter2"}
    opts["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 1}
    with pytest.raises(CheckpointError, match=r"cannot be listed.*storage_options") as e:
        FsspecStore("s3://b/x", skip_instance_cache=True, **opts)
    assert "hunter2" not in str(e.value)


# -- other processes' saves and deletes -----------------------------------------------------

OTHER_WORKER = textwrap.dedent(
    """
    import sys, torch
    from hpsearch.checkpoint import FsspecStore

    store = FsspecStore(sys.argv[1])
    store.delete(sys.argv[2])
    print(store.save({"model": {"w": torch.full((4,), 2.0)}}, {"by": "other"}).id)
    """
)


def test_another_processes_saves_and_deletes_are_seen_at_once(s3: S3) -> None:  # noqa: F811
    url = s3.url("xproc")
    store = FsspecStore(url)
    gone = store.save({"model": {"w": torch.ones(4)}}, {"n": 1})
    keep = store.save({"model": {"w": torch.ones(4)}}, {"n": 2})
    # everything this process could have cached about them
    assert [i.id for i in store.list()] == [gone.id, keep.id]
    assert store.exists(gone.id) and store.load(gone.id).state == {"n": 1}
    assert store.verify(gone.id) == gone and store.leftovers() == []
    out = subprocess.run(
        [sys.executable, "-c", OTHER_WORKER, url, gone.id],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    new = out.strip()
    assert not store.exists(gone.id)
    with pytest.raises(CheckpointNotFound):
        store.load(gone.id)
    assert [i.id for i in store.list()] == [keep.id, new]
    assert store.exists(new) and store.load(new).state == {"by": "other"}
