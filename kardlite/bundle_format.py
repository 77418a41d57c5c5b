"""The bundle format, in one place: the constants, the manifest (read, write, seal), verification, signing and
the inference settings a manifest stores. Export (:mod:`kardlite.export.bundle`), the runtime and KB updates
import it; it imports neither of them (nor torch).

A bundle is a closed set of regular files. Every path in the manifest is relative and stays inside the folder, a
symbolic link anywhere in it is refused, and a file the manifest does not list is refused (or only reported, with
``allow_extra``). Whoever changes a bundle's files or manifest after export (a KB update, a stamp in the manifest)
re-seals it with :func:`seal_bundle` or :func:`write_manifest`; that drops a signature, which must then be made
again with :func:`sign_bundle`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kardlite._io import atomic_write_bytes, atomic_write_text, sha256_file, unique_keys
from kardlite.errors import ArtifactError, InputError, MissingExtraError
from kardlite.settings import InferenceSettings

# 2: the manifest's "inference" section (kardlite.settings.InferenceSettings) is the test-time path; 1 (before it)
# is still read, with the behaviour it had (see bundle_settings).
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
KIND = "kardlite-bundle"
MANIFEST = "manifest.json"
STUDENT_FILE = "student.gguf"
KB_DIR = "kb"
RERANKER_DIR = "reranker"
DIGEST_FILE = "bundle.sha256"
SIGNATURE_FILE = "bundle.sig"
# Files of the bundle itself rather than of its contents: never listed in the manifest.
CONTROL_FILES = (MANIFEST, DIGEST_FILE, SIGNATURE_FILE)
# Signed message = this prefix + the manifest's bytes, so a bundle signature can never pass for another one.
_SIGNATURE_CONTEXT = b"kardlite-bundle-signature-v1\0"

# The manifest's "decoding" section: a view of the inference settings kept for readers of schema 1, plus the
# runtime's context window. These are its schema-1 defaults, what an old bundle without a key meant.
DEFAULT_DECODING: dict[str, Any] = {"max_new_tokens": 128, "temperature": 0.0, "samples": 1,
                                    "sample_temperature": 1.0, "top_k": 50, "top_p": 0.95, "n_ctx": 1024,
                                    "seed": 0}


def bundle_settings(manifest: Mapping[str, Any], *, where: str = MANIFEST) -> tuple[InferenceSettings, bool]:
    """The inference settings a bundle runs with, and whether it is a schema-1 bundle (``legacy``).

    A schema-2 manifest stores them (``inference``). A schema-1 bundle (exported before the settings existed) is
    read with the behaviour it was exported for: its prompt, retrieval and decoding sections, an output without an
    answer line left without an answer (``no_answer="invalid"``), and (the caller's part) generation not stopped
    at the answer line.

    Raises:
        ArtifactError: a stored section that is not valid settings.
    """
    if "inference" in manifest:
        try:
            return InferenceSettings.from_dict(manifest["inference"], where=f"{where}: inference").resolve(), False
        except InputError as err:
            raise ArtifactError(f"{err}; re-export the bundle") from None
    try:
        prompt, retrieval = manifest["prompt"], manifest["retrieval"]
        decoding = {**DEFAULT_DECODING, **dict(manifest["decoding"])}
        samples = int(decoding["samples"])
        settings = InferenceSettings(
            mode=prompt["mode"], max_source_tokens=int(prompt["max_tokens"]), n_docs=int(retrieval["n_docs"]),
            first_stage=retrieval["first_stage"], pool=int(retrieval["pool"]), rerank=True,
            max_new_tokens=int(decoding["max_new_tokens"]), decoding="sc" if samples > 1 else "greedy",
            samples=samples if samples > 1 else InferenceSettings().samples, top_k=int(decoding["top_k"]),
            top_p=float(decoding["top_p"]), temperature=float(decoding["sample_temperature"]),
            seed=int(decoding["seed"]), answer_scoring="generated", no_answer="invalid")
    except (KeyError, TypeError, ValueError, InputError) as err:
        raise ArtifactError(f"{where}: its prompt, retrieval or decoding section is not valid ({err}); re-export "
                            "the bundle") from None
    return settings, True


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_manifest(bundle: str | Path, manifest: Mapping[str, Any]) -> None:
    """Write a bundle's ``manifest.json`` and its digest ``bundle.sha256``; any signature is removed.

    Use this (not a plain JSON write) for every change of a bundle's manifest, or the runtime refuses the
    bundle. It does not re-hash the files: after changing files, call :func:`seal_bundle` instead. A removed
    signature is made again with :func:`sign_bundle`.

    Args:
        bundle: the bundle folder.
        manifest: the whole manifest; its paths must be relative and inside the bundle.

    Raises:
        ArtifactError: a path in the manifest is absolute, leaves the bundle or is not a plain relative path.
    """
    bundle = Path(bundle)
    _check_manifest_paths(bundle, manifest)
    data = _manifest_bytes(manifest)
    # The old signature goes first: a crash part-way must not leave a signature next to another manifest.
    (bundle / SIGNATURE_FILE).unlink(missing_ok=True)
    atomic_write_bytes(bundle / MANIFEST, data)
    atomic_write_text(bundle / DIGEST_FILE, f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n")


def seal_bundle(bundle: str | Path, manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """List every file of a bundle with its sha256 and size in the manifest, then :func:`write_manifest`.

    Call this after adding, removing or changing files of a bundle (e.g. updating its KB), with the edited
    manifest or none (then the one on disk is re-read). Costs one read of every file (~0.3 s per 100 MB).

    Args:
        bundle: the bundle folder.
        manifest: the manifest to write (its ``files`` is replaced); None = the bundle's current one.

    Returns:
        The manifest as written.

    Raises:
        ArtifactError: a symbolic link or a non-regular file in the bundle, or a bad path in the manifest.
    """
    bundle = Path(bundle)
    if manifest is None:
        manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    out = dict(manifest)
    out["files"] = {rel: {"sha256": sha256_file(bundle / rel), "bytes": (bundle / rel).stat().st_size}
                    for rel in _walk(bundle)}
    write_manifest(bundle, out)
    return out


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """Parse a bundle's ``manifest.json`` after checking it against ``bundle.sha256``; check its kind, schema
    version and paths (not the files: that is :func:`verify_bundle`).

    Raises:
        ArtifactError: no bundle, a missing or different digest, an unreadable manifest, another schema version,
            or a path that is absolute or leaves the bundle.
    """
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise ArtifactError(f"{bundle}: bundle folder not found")
    for control in CONTROL_FILES:
        if (bundle / control).is_symlink():
            raise ArtifactError(f"{bundle / control}: is a symbolic link; a bundle holds only regular files")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {bundle} is not a kardlite bundle")
    try:
        data = path.read_bytes()
        digest = (bundle / DIGEST_FILE).read_text(encoding="utf-8") if (bundle / DIGEST_FILE).is_file() else None
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: unreadable ({err})") from None
    if digest is None:
        raise ArtifactError(f"{bundle / DIGEST_FILE}: missing, so {path} cannot be checked; re-export the bundle "
                            "(or, if you changed it on purpose, re-seal it with kardlite.bundle_format.seal_bundle)")
    if digest != f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n":  # exactly as written: every byte counts
        raise ArtifactError(f"{path}: sha256 differs from {DIGEST_FILE}: the manifest was altered; re-export the "
                            "bundle")
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ArtifactError(f"{path}: unreadable ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ArtifactError(f"{path}: not a kardlite bundle manifest")
    if manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise ArtifactError(f"{path}: schema version {manifest.get('schema_version')!r}, this kardlite reads "
                            f"{' and '.join(map(str, READABLE_SCHEMA_VERSIONS))}; re-export the bundle")
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise ArtifactError(f"{path}: no file list")
    _check_manifest_paths(bundle, manifest)
    return manifest


def verify_bundle(bundle: str | Path, manifest: Mapping[str, Any] | None = None, *, hashes: bool = True,
                  allow_extra: bool = False, trusted_key: str | Path | None = None) -> list[str]:
    """Check that a bundle is exactly what its manifest lists: no links, no unknown files, every file present
    with its size and sha256, and (with ``trusted_key``) the manifest signed by that key.

    Args:
        bundle: the bundle folder.
        manifest: its manifest if already read (with :func:`read_manifest`); None = read it here.
        hashes: compare sha256s too (~0.3 s per 100 MB); False checks presence, type and size only.
        allow_extra: report files that the manifest does not list instead of refusing the bundle.
        trusted_key: a PEM Ed25519 public key file: the bundle must carry a valid signature by it
            (needs the ``cryptography`` package, extra ``sign``). Implies ``hashes``.

    Returns:
        The unlisted files found (bundle-relative), only ever non-empty with ``allow_extra``.

    Raises:
        ArtifactError: naming the first missing, truncated, altered, linked or unlisted file, or a missing or
            bad signature.
        MissingExtraError: ``trusted_key`` given but ``cryptography`` is not installed.
    """
    bundle = Path(bundle)
    manifest = manifest if manifest is not None else read_manifest(bundle)
    if trusted_key is not None:
        verify_signature(bundle, trusted_key)
        hashes = True
    listed = manifest["files"]
    present = _walk(bundle)
    extra = [rel for rel in present if rel not in listed]
    if extra and not allow_extra:
        raise ArtifactError(f"{bundle / extra[0]}: not listed in {MANIFEST}"
                            + (f" (and {len(extra) - 1} more unlisted files)" if len(extra) > 1 else "")
                            + "; a bundle holds only its listed files: remove it, or re-export the bundle")
    on_disk = set(present)
    for rel, info in listed.items():
        path = bundle / rel
        if rel not in on_disk:
            raise ArtifactError(f"{path}: missing from the bundle (listed in {MANIFEST}); re-export the bundle")
        if not isinstance(info, dict):
            raise ArtifactError(f"{bundle / MANIFEST}: bad entry for {rel!r}")
        size = path.stat().st_size
        if size != info.get("bytes"):
            expected = info.get("bytes")
            kind = "truncated" if isinstance(expected, int) and size < expected else "changed size"
            raise ArtifactError(f"{path}: {kind} ({size} bytes, {MANIFEST} says {expected}); re-export the bundle")
        if hashes and sha256_file(path) != info.get("sha256"):
            raise ArtifactError(f"{path}: sha256 differs from {MANIFEST}: the file was altered; re-export the bundle")
    return extra


# ---------------------------------------------------------------------------------------------- signing
def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingExtraError("cryptography", "sign") from None
    return serialization, ed25519


def generate_signing_key(private_key: str | Path, public_key: str | Path) -> None:
    """Write a new Ed25519 key pair as PEM files: the private key (PKCS#8, mode 0600) signs bundles
    (:func:`sign_bundle`), the public key is what a runtime trusts (``load(..., trusted_key=...)``).

    Raises:
        InputError: either file exists already (keys are never overwritten).
        MissingExtraError: ``cryptography`` is not installed (extra ``sign``).
    """
    serialization, ed25519 = _crypto()
    private_key, public_key = Path(private_key), Path(public_key)
    for path in (private_key, public_key):
        if path.exists():
            raise InputError("exists; refusing to overwrite a key", path=path)
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    atomic_write_bytes(public_key, public_pem)


def _load_key(path: str | Path, private: bool) -> Any:
    serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"cannot read key ({err.strerror})", path=path) from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as err:
        raise InputError(f"not a PEM {'private' if private else 'public'} key ({err})", path=path) from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise InputError(f"not an Ed25519 {'private' if private else 'public'} key", path=path)
    return key


def sign_bundle(bundle: str | Path, private_key: str | Path) -> Path:
    """Sign a bundle's manifest with an Ed25519 private key (PEM), after checking the whole bundle.

    The manifest lists every file's sha256, so the signature covers all of them.

    Returns:
        The signature file (``bundle.sig``).

    Raises:
        ArtifactError: the bundle does not verify (nothing is signed then).
        InputError: the key is unreadable or not Ed25519.
        MissingExtraError: ``cryptography`` is not installed (extra ``sign``).
    """
    bundle = Path(bundle)
    key = _load_key(private_key, private=True)
    manifest = read_manifest(bundle)
    verify_bundle(bundle, manifest)
    signature = key.sign(_SIGNATURE_CONTEXT + (bundle / MANIFEST).read_bytes())
    atomic_write_text(bundle / SIGNATURE_FILE, base64.b64encode(signature).decode("ascii") + "\n")
    return bundle / SIGNATURE_FILE


def verify_signature(bundle: str | Path, trusted_key: str | Path) -> None:
    """Check ``bundle.sig`` against a trusted Ed25519 public key (PEM). Only the manifest is read here: pair it
    with :func:`verify_bundle` (which calls this when given ``trusted_key``) so the files are checked too.

    Raises:
        ArtifactError: no signature, or one that this key did not make for this manifest.
        InputError: the key is unreadable or not Ed25519.
        MissingExtraError: ``cryptography`` is not installed (extra ``sign``).
    """
    bundle = Path(bundle)
    key = _load_key(trusted_key, private=False)
    from cryptography.exceptions import InvalidSignature
    sig_path = bundle / SIGNATURE_FILE
    if sig_path.is_symlink() or not sig_path.is_file():
        raise ArtifactError(f"{sig_path}: missing; the bundle is not signed, and a trusted key was given")
    try:
        signature = base64.b64decode(sig_path.read_bytes().strip(), validate=True)
        key.verify(signature, _SIGNATURE_CONTEXT + (bundle / MANIFEST).read_bytes())
    except (ValueError, InvalidSignature):
        raise ArtifactError(f"{sig_path}: not a valid signature of {MANIFEST} by the trusted key {trusted_key}; "
                            "the bundle was altered or signed by another key") from None


# ---------------------------------------------------------------------------------------------- confinement
def _relative(bundle: Path, value: Any, where: str) -> str:
    """``value`` as a clean bundle-relative POSIX path, or an ArtifactError naming the manifest field."""
    bad = None
    if not isinstance(value, str) or not value:
        bad = "not a path"
    elif "\\" in value or "\0" in value or value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        bad = "an absolute or non-POSIX path"
    elif any(part in ("", ".", "..") for part in value.split("/")):
        bad = "not a plain relative path inside the bundle"
    if bad:
        raise ArtifactError(f"{bundle / MANIFEST}: {where} is {value!r}: {bad}; a bundle refers only to its own "
                            "files, by relative paths")
    return value


def _check_manifest_paths(bundle: Path, manifest: Mapping[str, Any]) -> None:
    files = manifest.get("files") or {}
    if not isinstance(files, Mapping):
        raise ArtifactError(f"{bundle / MANIFEST}: 'files' is not a mapping")
    for rel in files:
        _relative(bundle, rel, "a file entry")
        if rel in CONTROL_FILES:
            raise ArtifactError(f"{bundle / MANIFEST}: lists its own control file {rel!r}")
    student = manifest.get("student")
    if isinstance(student, Mapping):
        rel = _relative(bundle, student.get("file"), "student.file")
        if files and rel not in files:
            raise ArtifactError(f"{bundle / MANIFEST}: student.file {rel!r} is not one of the bundle's listed files")
    retrieval = manifest.get("retrieval")
    if isinstance(retrieval, Mapping):
        kb = _relative(bundle, retrieval.get("kb", KB_DIR), "retrieval.kb")
        if files and f"{kb}/manifest.json" not in files:
            raise ArtifactError(f"{bundle / MANIFEST}: retrieval.kb {kb!r} is not a knowledge base of the bundle")
        rr = retrieval.get("reranker")
        if isinstance(rr, Mapping):
            rr_dir = _relative(bundle, rr.get("dir"), "retrieval.reranker.dir")
            if files and not any(f.startswith(f"{rr_dir}/") for f in files):
                raise ArtifactError(f"{bundle / MANIFEST}: retrieval.reranker.dir {rr_dir!r} holds no listed file")
            if rr.get("passage_cache") is not None:
                cache = f"{rr_dir}/{_relative(bundle, rr['passage_cache'], 'retrieval.reranker.passage_cache')}"
                if files and cache not in files:
                    raise ArtifactError(f"{bundle / MANIFEST}: passage cache {cache!r} is not a listed file")
        elif rr is not None:
            raise ArtifactError(f"{bundle / MANIFEST}: retrieval.reranker is not an object")
    encoders = manifest.get("encoders")
    if isinstance(encoders, Mapping):
        for key, value in encoders.items():
            if value is not None:
                _relative(bundle, value, f"encoders.{key}")


def _walk(bundle: Path) -> list[str]:
    """Bundle-relative paths of every file but the control files, sorted; a link or a special file (FIFO,
    socket, device) anywhere inside is an ArtifactError naming it. Nothing is followed out of the folder."""
    found = []

    def fail(err: OSError) -> None:
        raise ArtifactError(f"{err.filename or bundle}: cannot read ({err.strerror})")

    for dirpath, dirnames, filenames in os.walk(bundle, onerror=fail):
        here = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            path = here / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ArtifactError(f"{path}: is a symbolic link; a bundle holds only regular files (links could "
                                    "point out of it)")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ArtifactError(f"{path}: is not a regular file; a bundle holds only regular files")
        dirnames.sort()
        for name in sorted(filenames):
            rel = (here / name).relative_to(bundle).as_posix()
            if rel not in CONTROL_FILES:
                found.append(rel)
    return sorted(found)
