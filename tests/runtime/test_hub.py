"""Model downloads against a real HTTP server on 127.0.0.1: resume, retries, verification, cache."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pytest
from fileserver import FileServer

from dymn_edge.runtime import hub, registry
from dymn_edge.runtime.errors import ChecksumError, DownloadError, UnknownModelError

pytestmark = pytest.mark.network

MN04_SHA256 = "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"
MN04_SIZE = 4_066_513
MN04_PATH = "/v0.0.1/mn04_as_mAP_432.pt"
MN01_PATH = "/v0.0.1/mn01_as_mAP_298.pt"
HUB_LOGGER = "dymn_edge.runtime.hub"


@pytest.fixture(scope="module")
def mn04_bytes(mn04_checkpoint) -> bytes:
    if not mn04_checkpoint.is_file():
        pytest.skip(f"{mn04_checkpoint} is absent")
    data = mn04_checkpoint.read_bytes()
    assert hashlib.sha256(data).hexdigest() == MN04_SHA256
    assert len(data) == MN04_SIZE
    return data


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DYMN_EDGE_CACHE", str(root))
    monkeypatch.delenv("DYMN_EDGE_BASE_URL", raising=False)
    return root


@pytest.fixture
def server(mn04_bytes, cache):
    with FileServer() as srv:
        srv.files[MN04_PATH] = mn04_bytes
        yield srv


@pytest.fixture
def base(server) -> str:
    return server.url + "/v0.0.1"


def mn04_dest(cache: Path) -> Path:
    return cache / "checkpoints" / "mn04_as_mAP_432.pt"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---------------------------------------------------------------------------------------- fetch


def test_fresh_fetch_downloads_and_verifies(server, base, cache, mn04_bytes):
    path = hub.fetch("mn04_as", base_url=base, progress=False)
    assert path == mn04_dest(cache)
    assert path.read_bytes() == mn04_bytes
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MN04_SHA256
    assert server.requests == [(MN04_PATH, None)]
    assert re.fullmatch(r"dymn-edge/\S+", server.user_agents[0])
    assert leftovers(path.parent) == ["mn04_as_mAP_432.pt"]  # no .part, no sidecar for a pinned model
    assert hub.cached_path("mn04_as") == path


def test_second_fetch_makes_no_request(server, base, cache):
    first = hub.fetch("mn04_as", base_url=base, progress=False)
    assert len(server.requests) == 1
    second = hub.fetch("mn04_as", base_url=base, progress=False)
    assert second == first
    assert len(server.requests) == 1


def test_resume_from_part_file(server, base, cache, mn04_bytes):
    dest = mn04_dest(cache)
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(mn04_bytes[:1_000_000])
    path = hub.fetch("mn04_as", base_url=base, progress=False)
    assert server.requests == [(MN04_PATH, "bytes=1000000-")]
    assert path.read_bytes() == mn04_bytes
    assert leftovers(dest.parent) == [dest.name]


def test_dropped_connection_is_retried_and_resumed(server, base, cache, mn04_bytes, caplog):
    server.drop_after, server.drop_times = 500_000, 1
    with caplog.at_level(logging.WARNING, logger=HUB_LOGGER):
        path = hub.fetch("mn04_as", base_url=base, progress=False)
    assert server.requests == [(MN04_PATH, None), (MN04_PATH, "bytes=500000-")]
    assert path.read_bytes() == mn04_bytes
    assert any("retry 1/3" in r.getMessage() for r in caplog.records)


def test_corrupted_download_raises_checksum_error_and_leaves_nothing(server, base, cache, mn04_bytes):
    corrupted = bytearray(mn04_bytes)
    corrupted[123_456] ^= 0xFF
    server.files[MN04_PATH] = bytes(corrupted)
    bad_hash = hashlib.sha256(corrupted).hexdigest()
    with pytest.raises(ChecksumError) as info:
        hub.fetch("mn04_as", base_url=base, progress=False)
    message = str(info.value)
    assert MN04_SHA256 in message and bad_hash in message
    assert base + "/mn04_as_mAP_432.pt" in message
    assert str(mn04_dest(cache)) in message
    assert leftovers(mn04_dest(cache).parent) == []
    assert hub.cached_path("mn04_as") is None


def test_404_raises_download_error_without_retry(server, base, cache):
    server.status[MN04_PATH] = 404
    with pytest.raises(DownloadError) as info:
        hub.fetch("mn04_as", base_url=base, progress=False)
    assert base + "/mn04_as_mAP_432.pt" in str(info.value)
    assert "404" in str(info.value)
    assert isinstance(info.value.__cause__, hub.urllib.error.HTTPError)
    assert len(server.requests) == 1  # a 4xx is final
    assert leftovers(mn04_dest(cache).parent) == []


def test_tampered_cache_is_downloaded_again(server, base, cache, mn04_bytes, caplog):
    path = hub.fetch("mn04_as", base_url=base, progress=False)
    path.write_bytes(b"tampered" + mn04_bytes[8:])
    tampered_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hub.cached_path("mn04_as") is None
    with caplog.at_level(logging.WARNING, logger=HUB_LOGGER):
        again = hub.fetch("mn04_as", base_url=base, progress=False)
    assert again == path
    assert path.read_bytes() == mn04_bytes
    assert server.requests == [(MN04_PATH, None), (MN04_PATH, None)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in m and MN04_SHA256 in m and tampered_hash in m for m in warnings), warnings


def test_trust_on_first_use_for_unpinned_model(server, base, cache, caplog):
    assert registry.get_card("mn01_as").sha256 is None
    data = bytes(range(256)) * 1000
    digest = hashlib.sha256(data).hexdigest()
    server.files[MN01_PATH] = data
    with caplog.at_level(logging.WARNING, logger=HUB_LOGGER):
        path = hub.fetch("mn01_as", base_url=base, progress=False)
    assert path == cache / "checkpoints" / "mn01_as_mAP_298.pt"
    assert path.read_bytes() == data
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.read_text() == digest + "\n"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not pinned" in r.getMessage() and digest in r.getMessage() for r in warnings)

    assert hub.cached_path("mn01_as") == path
    assert hub.fetch("mn01_as", base_url=base, progress=False) == path
    assert len(server.requests) == 1  # verified against the record, no request

    path.write_bytes(data[:-1] + b"\x00")
    assert hub.cached_path("mn01_as") is None


def test_unpinned_model_with_changed_upstream_is_rejected(server, base, cache):
    """After trust on first use, different bytes from the server are a ChecksumError."""
    server.files[MN01_PATH] = b"first release" * 100
    path = hub.fetch("mn01_as", base_url=base, progress=False)
    path.unlink()
    server.files[MN01_PATH] = b"other release" * 100
    with pytest.raises(ChecksumError):
        hub.fetch("mn01_as", base_url=base, progress=False)
    assert not path.exists()


def test_base_url_env_var_is_honoured(server, cache, monkeypatch, mn04_bytes):
    monkeypatch.setenv("DYMN_EDGE_BASE_URL", server.url + "/v0.0.1/")
    path = hub.fetch("mn04_as", progress=False)
    assert server.requests == [(MN04_PATH, None)]
    assert path.read_bytes() == mn04_bytes


def test_explicit_wrong_sha256_for_pinned_model_fails_before_any_request(server, base, cache):
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        hub.fetch("mn04_as", base_url=base, sha256=wrong, progress=False)
    assert wrong in str(info.value) and MN04_SHA256 in str(info.value)
    assert server.requests == []
    assert not cache.exists()


def test_explicit_sha256_pins_an_unpinned_model(server, base, cache, caplog):
    data = b"pinned by the user" * 50
    server.files[MN01_PATH] = data
    with pytest.raises(ChecksumError):
        hub.fetch("mn01_as", base_url=base, sha256="f" * 64, progress=False)
    digest = hashlib.sha256(data).hexdigest()
    with caplog.at_level(logging.WARNING, logger=HUB_LOGGER):
        path = hub.fetch("mn01_as", base_url=base, sha256=digest.upper(), progress=False)
    assert path.read_bytes() == data
    assert path.with_name(path.name + ".sha256").read_text() == digest + "\n"
    assert not [r for r in caplog.records if "not pinned" in r.getMessage()]


def test_unknown_model_lists_valid_names(cache):
    with pytest.raises(UnknownModelError) as info:
        hub.fetch("no_such_model", progress=False)
    message = str(info.value)
    assert "no_such_model" in message
    for name in ("mn04_as", "mn10_as", "dymn20_as"):
        assert name in message
    with pytest.raises(UnknownModelError):
        hub.cached_path("no_such_model")


def test_cached_path_is_none_when_absent(cache):
    assert hub.cached_path("mn04_as") is None
    assert hub.cached_path("mn01_as") is None


# ------------------------------------------------------------------------------------- download


def test_download_part_already_complete_gets_416_and_verifies(server, tmp_path, mn04_bytes):
    dest = tmp_path / "a" / "b" / "model.pt"
    dest.parent.mkdir(parents=True)
    dest.with_name("model.pt.part").write_bytes(mn04_bytes)
    digest = hub.download(server.url + MN04_PATH, dest, sha256=MN04_SHA256, progress=False)
    assert digest == MN04_SHA256
    assert server.requests == [(MN04_PATH, f"bytes={MN04_SIZE}-")]
    assert dest.read_bytes() == mn04_bytes
    assert leftovers(dest.parent) == ["model.pt"]


def test_download_stale_part_is_discarded_once(server, tmp_path, mn04_bytes):
    dest = tmp_path / "model.pt"
    dest.with_name("model.pt.part").write_bytes(b"\x00" * 1000)  # not a prefix of the file
    digest = hub.download(server.url + MN04_PATH, dest, sha256=MN04_SHA256, progress=False)
    assert digest == MN04_SHA256
    assert server.requests == [(MN04_PATH, "bytes=1000-"), (MN04_PATH, None)]
    assert dest.read_bytes() == mn04_bytes


def test_download_server_ignoring_range_restarts_from_zero(server, tmp_path, mn04_bytes):
    server.ignore_range = True
    dest = tmp_path / "model.pt"
    dest.with_name("model.pt.part").write_bytes(mn04_bytes[:1000])
    digest = hub.download(server.url + MN04_PATH, dest, progress=False)
    assert digest == MN04_SHA256
    assert server.requests == [(MN04_PATH, "bytes=1000-")]
    assert dest.read_bytes() == mn04_bytes


def test_download_gives_up_after_retries(server, tmp_path):
    server.drop_after, server.drop_times = 100_000, 10
    dest = tmp_path / "model.pt"
    with pytest.raises(DownloadError) as info:
        hub.download(server.url + MN04_PATH, dest, retries=2, progress=False)
    assert server.url + MN04_PATH in str(info.value)
    assert "IncompleteRead" in str(info.value)
    assert info.value.__cause__ is not None
    assert [r for _, r in server.requests] == [None, "bytes=100000-", "bytes=200000-"]
    assert not dest.exists()
    assert dest.with_name("model.pt.part").stat().st_size == 300_000  # kept for a later resume


def test_download_retries_server_errors(server, tmp_path, mn04_bytes):
    server.status[MN04_PATH], server.status_times[MN04_PATH] = 503, 1
    dest = tmp_path / "model.pt"
    assert hub.download(server.url + MN04_PATH, dest, progress=False) == MN04_SHA256
    assert len(server.requests) == 2
    assert dest.read_bytes() == mn04_bytes


def test_download_progress_bar_goes_to_stderr(server, tmp_path, capsys):
    dest = tmp_path / "model.pt"
    hub.download(server.url + MN04_PATH, dest, progress=True)
    captured = capsys.readouterr()
    assert "model.pt" in captured.err
    assert captured.out == ""
    hub.download(server.url + MN04_PATH, tmp_path / "quiet.pt", progress=False)
    assert capsys.readouterr().err == ""


def test_our_own_model_has_nothing_to_download(cache):
    with pytest.raises(UnknownModelError, match="dymn04_edge has no release file to download: it ships inside the package"):
        hub.fetch("dymn04_edge")
