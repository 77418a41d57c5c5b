"""Bundle confinement: the manifest digest, the optional Ed25519 signature, and the refusal of every kind of tamper
(a changed byte, a deleted, extra or linked file, an edited manifest field, a path out of the bundle), each
refused with the file named. All on a copy of the session's real bundle."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kardlite.bundle_format import (
    DIGEST_FILE,
    MANIFEST,
    SIGNATURE_FILE,
    read_manifest,
    seal_bundle,
    verify_bundle,
    write_manifest,
)
from kardlite.errors import ArtifactError

pytestmark = pytest.mark.slow

# Positions flipped in each content file: the first and last byte and this many seeded ones between.
SAMPLED_POSITIONS = 1


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One copy of the session bundle for the module; every test restores what it damages."""
    copy = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("confine") / "bundle"))
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


def _refused(bundle: Path, named: str, **kwargs) -> str:
    """The runtime's own check (load's read_manifest + verify_bundle) refuses the bundle, naming ``named``."""
    with pytest.raises(ArtifactError) as info:
        verify_bundle(bundle, read_manifest(bundle), **kwargs)
    assert str(bundle / named) in str(info.value), str(info.value)
    return str(info.value)


def _flip(path: Path, pos: int) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:])
    return data


@contextlib.contextmanager
def _flipped(path: Path, pos: int) -> Iterator[None]:
    """One byte changed for the duration (restored even when the check fails: the copy is shared)."""
    original = _flip(path, pos)
    try:
        yield
    finally:
        path.write_bytes(original)


def test_every_byte_of_the_manifest_and_its_digest_is_covered(bundle: Path) -> None:
    for name in (MANIFEST, DIGEST_FILE):
        path = bundle / name
        size = path.stat().st_size
        for pos in range(size):
            with _flipped(path, pos), pytest.raises(ArtifactError, match=re.escape(str(bundle / MANIFEST))):
                read_manifest(bundle)
        assert size > 30
    verify_bundle(bundle, read_manifest(bundle))  # restored: accepted again


def test_a_changed_byte_of_any_file_is_named(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    rng = random.Random(13)
    checked = 0
    for rel, info in manifest["files"].items():
        size = info["bytes"]
        positions = {0, size - 1} | {rng.randrange(size) for _ in range(SAMPLED_POSITIONS)} if size else set()
        for pos in sorted(positions):
            with _flipped(bundle / rel, pos):
                _refused(bundle, rel)
            checked += 1
    assert checked >= 2 * len(manifest["files"])
    verify_bundle(bundle, read_manifest(bundle))


def test_a_deleted_or_extra_file_is_named(bundle: Path) -> None:
    from kardlite.runtime import load

    for rel in read_manifest(bundle)["files"]:
        moved = bundle.parent / "moved"
        os.replace(bundle / rel, moved)
        with pytest.raises(ArtifactError, match=rf"{re.escape(str(bundle / rel))}: missing from the bundle"):
            load(bundle, verify=False)  # structure is checked even without hashing
        os.replace(moved, bundle / rel)
    for rel in ("notes.txt", "kb/extra.bin", "reranker/sub/x.onnx"):
        (bundle / rel).parent.mkdir(exist_ok=True)
        (bundle / rel).write_text("not part of the bundle")
        message = _refused(bundle, rel)
        assert "not listed" in message
        assert verify_bundle(bundle, read_manifest(bundle), hashes=False, allow_extra=True) == [rel]
        (bundle / rel).unlink()
    shutil.rmtree(bundle / "reranker" / "sub")


def test_links_and_special_files_are_refused(bundle: Path) -> None:
    outside = bundle.parent / "outside.bin"
    target = bundle / "kb" / "hnsw.bin"
    shutil.copyfile(target, outside)
    os.replace(target, bundle.parent / "saved.bin")
    os.symlink(outside, target)  # same bytes, but a link out of the bundle
    assert "symbolic link" in _refused(bundle, "kb/hnsw.bin", hashes=False)
    target.unlink()
    os.replace(bundle.parent / "saved.bin", target)

    os.symlink(bundle / "kb", bundle / "kb2")  # a linked folder, even one pointing inside
    assert "symbolic link" in _refused(bundle, "kb2", hashes=False)
    (bundle / "kb2").unlink()
    os.mkfifo(bundle / "kb" / "pipe.txt")
    assert "not a regular file" in _refused(bundle, "kb/pipe.txt", hashes=False)
    (bundle / "kb" / "pipe.txt").unlink()
    os.symlink(bundle / MANIFEST, bundle.parent / "m.json")
    verify_bundle(bundle, read_manifest(bundle), hashes=False)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["decoding"].update(temperature=1.5), "sha256 differs from bundle.sha256"),
    (lambda m: m.update(chat_template="{{ messages[0].content }}"), "sha256 differs from bundle.sha256"),
])
def test_an_edited_manifest_field_is_refused(bundle: Path, edit, message: str) -> None:
    original = (bundle / MANIFEST).read_bytes()
    manifest = json.loads(original)
    edit(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2))
    with pytest.raises(ArtifactError, match=re.escape(f"{bundle / MANIFEST}: {message}")):
        read_manifest(bundle)
    (bundle / MANIFEST).write_bytes(original)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda m: m["student"].update(file="/tmp/evil.gguf"), "student.file"),
    (lambda m: m["student"].update(file="../outside/student.gguf"), "student.file"),
    (lambda m: m["student"].update(file="kb/../student.gguf"), "student.file"),
    (lambda m: m["retrieval"].update(kb="/abs/kb"), "retrieval.kb"),
    (lambda m: m["retrieval"]["reranker"].update(dir="../reranker"), "retrieval.reranker.dir"),
    (lambda m: m["files"].update({"../escape.bin": {"sha256": "0" * 64, "bytes": 1}}), "a file entry"),
    (lambda m: m["files"].update({"C:\\x.bin": {"sha256": "0" * 64, "bytes": 1}}), "a file entry"),
    (lambda m: m["student"].update(file="unlisted.gguf"), "student.file"),
])
def test_paths_out_of_the_bundle_are_refused(bundle: Path, edit, field: str) -> None:
    """Even a re-digested manifest (what an attacker with write access would make) cannot point outside."""
    original = {name: (bundle / name).read_bytes() for name in (MANIFEST, DIGEST_FILE)}
    manifest = json.loads(original[MANIFEST])
    edit(manifest)
    with pytest.raises(ArtifactError, match=re.escape(field)):
        write_manifest(bundle, manifest)  # refused when written ...
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    import hashlib

    (bundle / MANIFEST).write_bytes(data)
    (bundle / DIGEST_FILE).write_text(f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n")
    with pytest.raises(ArtifactError, match=rf"{re.escape(str(bundle / MANIFEST))}: {re.escape(field)}"):
        read_manifest(bundle)  # ... and when read
    for name, data in original.items():
        (bundle / name).write_bytes(data)


def test_seal_after_a_change(bundle: Path) -> None:
    """What a KB update does: change files, re-seal; the runtime accepts the result and sees the change."""
    saved = {name: (bundle / name).read_bytes() for name in (MANIFEST, DIGEST_FILE)}
    (bundle / "kb" / "added.json").write_text("{}")
    manifest = read_manifest(bundle)
    manifest["evaluation"] = {"note": "resealed"}
    sealed = seal_bundle(bundle, manifest)
    assert "kb/added.json" in sealed["files"] and verify_bundle(bundle, read_manifest(bundle)) == []
    assert read_manifest(bundle)["evaluation"] == {"note": "resealed"}
    (bundle / "kb" / "added.json").unlink()
    for name, data in saved.items():
        (bundle / name).write_bytes(data)


def test_signed_bundle(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("cryptography")  # the `sign` extra; part of the dev extra, so CI runs this
    from typer.testing import CliRunner

    from kardlite.cli import app

    runner = CliRunner()
    priv, pub, other_pub = tmp_path / "k.pem", tmp_path / "k.pub", tmp_path / "other.pub"
    assert runner.invoke(app, ["export", "keygen", str(priv), str(pub)]).exit_code == 0
    assert runner.invoke(app, ["export", "keygen", str(tmp_path / "o.pem"), str(other_pub)]).exit_code == 0
    assert (priv.stat().st_mode & 0o777) == 0o600
    saved = {name: (bundle / name).read_bytes() for name in (MANIFEST, DIGEST_FILE)}

    unsigned = runner.invoke(app, ["export", "verify", str(bundle), "--trusted-key", str(pub)])
    assert unsigned.exit_code == 2 and f"{bundle / SIGNATURE_FILE}: missing" in unsigned.output
    result = runner.invoke(app, ["export", "sign", str(bundle), "--key", str(priv)])
    assert result.exit_code == 0, result.output
    ok = runner.invoke(app, ["export", "verify", str(bundle), "--trusted-key", str(pub)])
    assert ok.exit_code == 0 and "signed by the trusted key" in ok.output
    _refused(bundle, SIGNATURE_FILE, trusted_key=other_pub)
    from kardlite.runtime import load

    with load(bundle, threads=1, warm_reranker=0, trusted_key=pub) as pipe:
        assert pipe.manifest["name"] == "tiny"
    with pytest.raises(ArtifactError, match="not a valid signature"):
        load(bundle, threads=1, trusted_key=other_pub)
    verify_bundle(bundle, read_manifest(bundle))  # the signature file is a control file, not an extra

    # Someone edits a setting and re-digests the manifest: the digest passes, the signature does not.
    manifest = json.loads(saved[MANIFEST])
    manifest["decoding"]["temperature"] = 2.0
    sig = (bundle / SIGNATURE_FILE).read_bytes()
    write_manifest(bundle, manifest)
    assert not (bundle / SIGNATURE_FILE).exists()  # write_manifest drops the stale signature
    (bundle / SIGNATURE_FILE).write_bytes(sig)  # ... and putting the old one back does not help
    verify_bundle(bundle, read_manifest(bundle))
    assert "not a valid signature" in _refused(bundle, SIGNATURE_FILE, trusted_key=pub)
    (bundle / SIGNATURE_FILE).write_bytes(b"garbage\n")
    assert "not a valid signature" in _refused(bundle, SIGNATURE_FILE, trusted_key=pub)
    for name, data in saved.items():
        (bundle / name).write_bytes(data)
    (bundle / SIGNATURE_FILE).write_bytes(sig)

    # A signed bundle whose content file changed: the signature holds, the manifest's sha256 does not.
    with _flipped(bundle / "student.gguf", 100):
        _refused(bundle, "student.gguf", trusted_key=pub, hashes=False)  # a trusted key implies hashing
    (bundle / SIGNATURE_FILE).unlink()
