"""The deployable bundle: a directory (or one tar file) with the compiled files and ``manifest.json``.

The manifest records how every number was made: source model and its sha256, target, backend,
options, toolchain versions, input/output specs with quantization, preprocessing, estimates,
fidelity, and every file with its sha256. There are no timestamps, so the same inputs give the
same bundle. This module needs only the standard library and numpy (and ``cryptography`` for
signatures): devices load bundles with it.

The trust model, enforced here and nowhere else (the runtime, bench, inspect and the agent all open
bundles through :func:`open_bundle`):

- ``manifest.json`` passes a strict schema check (types, required keys, format version, sizes)
  before anything in it is used; a failure names the field.
- Every path in the manifest is relative, normalised and inside the bundle; no file may be a link.
- ``files`` lists at least one file, each with its size and sha256, and every file the runtime opens
  (``runtime.model``, ``runtime.library``, ``runtime.params``, ``runtime.sources``) is one of them.
  Every listed file is verified before any is opened.
- An archive is checked member by member (regular files only, no absolute paths, no ``..``, no
  links or devices, nothing unlisted, sizes as listed) before anything is written.
- The bundle digest is the sha256 of the exact bytes of ``manifest.json``; since the manifest holds
  every file's sha256, the digest covers the whole bundle. ``signature.json`` (optional, not listed
  in ``files``) holds an Ed25519 signature of that digest; with ``trusted`` keys a bundle must carry
  a valid signature by one of them, checked before anything is unpacked.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgedl import _io
from edgedl.errors import InputFileError, OptionError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
MAX_MANIFEST_BYTES = 4 << 20
MAX_FILES = 256
MAX_FILE_BYTES = 4 << 30
RUNTIME_FILE_KEYS = ("model", "library", "params")  # each names one file the runtime opens
RUNTIME_FILE_LIST_KEYS = ("sources",)              # each lists files the runtime opens
ENGINES = ("litert", "tvm", "tflm", "onnxruntime", "ethos-u")
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "bool")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------------
# Writing


def check_output(out: str | os.PathLike, force: bool = False, option: str = "--output") -> Path:
    """Refuse, before any work, an output path that writing a bundle would destroy or cannot write.

    An existing path may be replaced only if it is an edgedl bundle (folder or archive) and ``force``
    is set; anything else there (a folder of the user's, a file) is never touched.
    """
    if out is None or not str(out).strip():
        raise OptionError(f"{option} is empty; give the bundle's path, e.g. {option} model.edgedl")
    path = Path(out)
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not is_bundle(path):
            what = "a folder" if path.is_dir() else "a file"
            raise OptionError(f"{option} '{path}' is {what} that is not an edgedl bundle; refusing to replace it "
                              "(choose a new path)")
        if not force:
            raise OptionError(f"{option} '{path}' is an existing bundle; pass --force to replace it, or choose "
                              "another path")
    _io.check_writable(path, option)
    return path


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds something ``edgedl compile`` wrote (a readable manifest), valid or not."""
    path = Path(path)
    try:
        _manifest_bytes(path)
    except InputFileError:
        return False
    return True


def write_bundle(out: str | os.PathLike, manifest: dict, files_dir: Path, archive: bool = False,
                 sign_key: str | os.PathLike | None = None) -> dict:
    """Write a bundle atomically: ``manifest`` plus the files it lists, copied from ``files_dir``.

    The ``files`` entry of the manifest is filled in here (path, bytes, sha256 of each file). An
    existing bundle at ``out`` is replaced only once the new one is complete (callers check with
    :func:`check_output` first that ``out`` may be replaced). With ``sign_key`` (an Ed25519 private
    key file from ``edgedl keygen``) the bundle digest is signed into ``signature.json``.

    Returns:
        The manifest as written.
    """
    out = Path(out)
    files_dir = Path(files_dir)
    manifest = dict(manifest, format_version=FORMAT_VERSION)
    entries = []
    for name in sorted(manifest.pop("files")):
        _check_path(name, "files[].path", out)
        src = files_dir / name
        entries.append({"path": name, "bytes": src.stat().st_size, "sha256": _io.sha256_file(src)})
    manifest["files"] = entries
    text = (json.dumps(manifest, indent=2, sort_keys=True, default=_io._json_default) + "\n").encode()
    validate_manifest(_parse(text, out), out)  # what we write, we must be able to read
    extra = {}
    if sign_key is not None:
        from edgedl.signing import sign_digest

        extra[SIGNATURE] = sign_digest(sign_key, bundle_digest(text))
    with _io.atomic_path(out, suffix="") as tmp:
        if archive:
            with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add(tar, MANIFEST, text)
                for name, data in extra.items():
                    _add(tar, name, data)
                for e in entries:
                    _add(tar, e["path"], (files_dir / e["path"]).read_bytes())
        else:
            tmp.mkdir()
            for e in entries:
                dst = tmp / e["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(files_dir / e["path"], dst)
            for name, data in extra.items():
                (tmp / name).write_bytes(data)
            (tmp / MANIFEST).write_bytes(text)
    return json.loads(text)


def _add(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------------
# Reading


def bundle_digest(manifest_bytes: bytes) -> str:
    """The bundle digest: sha256 of the exact bytes of ``manifest.json`` (which lists every file's sha256)."""
    return hashlib.sha256(manifest_bytes).hexdigest()


def read_manifest(bundle: str | os.PathLike) -> dict:
    """The manifest of a bundle directory or archive, schema-checked (files are not verified: see
    :func:`open_bundle`)."""
    path = Path(bundle)
    return Manifest.parse(_manifest_bytes(path), path)


def digest_of(bundle: str | os.PathLike) -> str:
    """The bundle digest of a bundle folder or archive (what ``edgedl inspect`` prints)."""
    return bundle_digest(_manifest_bytes(Path(bundle)))


def signature_of(bundle: str | os.PathLike) -> dict | None:
    """The parsed ``signature.json`` of a bundle, or None when it is unsigned."""
    path = Path(bundle)
    data = _member_bytes(path, SIGNATURE, required=False)
    if data is None:
        return None
    from edgedl.signing import parse_signature

    return parse_signature(data, path)


class Manifest(dict):
    """A bundle's ``manifest.json``, schema-checked: the JSON object itself, with names for what
    readers ask of it most.

    Example:
        >>> bundle = open_bundle("lenet.edgedl")                     # doctest: +SKIP
        >>> bundle.manifest.backend, bundle.manifest.target_name     # doctest: +SKIP
        ('litert', 'x86_64')
    """

    @classmethod
    def parse(cls, text: bytes, where) -> Manifest:
        """The manifest in ``text`` (the bytes of ``manifest.json``), after the schema check.

        Raises:
            InputFileError: not JSON, or a field the schema refuses (named).
        """
        manifest = _parse(text, where)
        validate_manifest(manifest, where)
        return cls(manifest)

    @property
    def backend(self) -> str:
        return self["backend"]

    @property
    def target_name(self) -> str:
        return self["target"]["name"]

    @property
    def engine(self) -> str:
        return self["runtime"]["engine"]

    @property
    def files(self) -> list[dict]:
        return self["files"]

    @property
    def size_bytes(self) -> int:
        """The bytes of every listed file together (what the device stores)."""
        return sum(f["bytes"] for f in self["files"])

    @property
    def fidelity(self) -> dict:
        return self.get("fidelity") or {}

    @property
    def estimates(self) -> dict:
        return self.get("estimates") or {}

    def target(self):
        """The recorded target as a :class:`edgedl.targets.Target` (checked as a target file is)."""
        from edgedl.targets import Target

        return Target.from_dict(self["target"])

    def fidelity_line(self) -> str:
        """What the fidelity check found, in a line: accuracy against the reference's where the samples
        have labels, agreement and error, and on what; or why it did not run."""
        f = self.fidelity
        if f.get("checked") is False or "samples" not in f:
            return f"not run here ({f.get('reason') or 'no check recorded'})"
        parts = []
        if "accuracy" in f:
            parts.append(f"accuracy {100 * f['accuracy']:.1f}% (reference {100 * f['reference_accuracy']:.1f}%)")
        if "top1_agreement" in f:
            parts.append(f"top-1 agreement {100 * f['top1_agreement']:.1f}%")
        if "snr_db" in f:
            parts.append(f"SNR {f['snr_db']:.1f} dB")
        if "max_abs_error" in f:
            parts.append(f"max abs error {f['max_abs_error']:.3g}")
        dataset = (self.get("samples") or {}).get("dataset")
        on = f"{f['samples']} samples of {dataset}" if dataset else f"{f['samples']} synthetic inputs (no accuracy)"
        emulated = f", emulated by {f.get('emulator') or 'qemu-user'} (no latency)" if f.get("emulated") else ""
        return ", ".join(parts) + f" on {on}{emulated}"


@dataclass
class Bundle:
    """A bundle on disk: where it is, its manifest, its digest and signer, and (once opened) the
    folder holding its verified files.

    :func:`open_bundle` (``Bundle.open``) checks a bundle against the trust model; ``compile_model``
    returns the Bundle it wrote. An opened archive is unpacked into a temporary folder that lives as
    long as the Bundle (or until :meth:`close`).

    Example:
        >>> with open_bundle("lenet.edgedl") as bundle:              # doctest: +SKIP
        ...     print("\n".join(bundle.summary()))
        lenet.edgedl: litert for x86_64, 62.3 KiB (63,812 B)
          digest: sha256:3f5c...
    """

    path: Path
    manifest: Manifest
    digest: str
    signed_by: str | None = None          # the key signature.json names (verified only when opened with trusted keys)
    directory: Path | None = None         # the verified files (None: written, not opened)
    _holder: tempfile.TemporaryDirectory | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | os.PathLike, trusted: list[bytes] | None = None) -> Bundle:
        """Check a bundle against the trust model and open it (see :func:`open_bundle`)."""
        return open_bundle(path, trusted=trusted)

    @classmethod
    def at(cls, path: str | os.PathLike) -> Bundle:
        """The bundle at ``path`` as written: manifest schema-checked, files not verified or unpacked."""
        path = Path(path)
        text = _manifest_bytes(path)
        return cls(path, Manifest.parse(text, path), bundle_digest(text),
                   _signer(_member_bytes(path, SIGNATURE, required=False), path))

    def file(self, name: str) -> Path:
        """The verified file ``name`` (a path the manifest lists) of an opened bundle."""
        if self.directory is None:
            raise OptionError(f"bundle {self.path} is not open; open it with edgedl.bundle.open_bundle first")
        if name not in {f["path"] for f in self.manifest.files}:
            raise InputFileError(self.path, f"lists no file '{name}'")
        return self.directory / name

    def close(self) -> None:
        """Remove the temporary folder an archive was unpacked into (nothing for a folder bundle)."""
        if self._holder is not None:
            self._holder.cleanup()
            self._holder = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def summary(self) -> list[str]:
        """What a person wants to know of the bundle, a line each: what it is, its digest and signer,
        why its backend was chosen, its fidelity and the backend's estimates."""
        from edgedl.report.format import estimate_lines, size

        m = self.manifest
        signer = ""
        if self.signed_by:
            from edgedl.signing import key_id

            signer = f" (signed by key {key_id(bytes.fromhex(self.signed_by))})"
        lines = [f"{self.path}: {m.backend} for {m.target_name}, {size(m.size_bytes)}",
                 f"  digest: sha256:{self.digest}{signer}"]
        reason = (m.get("selection") or {}).get("reason")
        if reason:
            lines.append(f"  why {m.backend}: {reason}")
        selection = m.get("selection") or {}
        notes = [(m.backend, selection.get("note"))] + [(c.get("backend"), c.get("note")) for c in
                                                        selection.get("candidates") or [] if c.get("backend") != m.backend]
        lines += [f"  note ({backend}): {note}" for backend, note in notes if note]
        lines.append(f"  fidelity: {m.fidelity_line()}")
        estimates = estimate_lines(m.estimates)
        if estimates:
            lines += ["  estimates:"] + [f"    {line}" for line in estimates]
        return lines


def open_bundle(bundle: str | os.PathLike, trusted: list[bytes] | None = None) -> Bundle:
    """Check a bundle against the trust model and open it.

    An archive is unpacked into a temporary folder (kept for as long as the returned Bundle, or
    until its ``close()``), after every member has been checked. ``trusted``: Ed25519 public keys
    (raw 32 bytes); when given, the bundle must be signed by one of them, and that is checked before
    anything is unpacked.

    Returns:
        The :class:`Bundle`, with ``directory`` holding its verified files.

    Raises:
        InputFileError: not a bundle, a manifest that fails the schema (the field named), a path that
            leaves the bundle, a link, a missing file or a hash mismatch (the file named), a missing or
            untrusted signature; nothing is loaded then.

    Example:
        >>> with open_bundle("lenet.edgedl") as bundle:              # doctest: +SKIP
        ...     model_file = bundle.file(bundle.manifest["runtime"]["model"])
    """
    path = Path(bundle)
    text = _manifest_bytes(path)
    signature = _member_bytes(path, SIGNATURE, required=False)
    if trusted is not None:
        check_trust(text, signature, trusted, path)
    manifest = Manifest.parse(text, path)
    signed_by = _signer(signature, path)
    if path.is_dir():
        _verify_dir(manifest, path, path)
        return Bundle(path, manifest, bundle_digest(text), signed_by, path)
    holder = tempfile.TemporaryDirectory(prefix="edgedl-bundle-")
    try:
        directory = Path(holder.name)
        _unpack(path, manifest, directory)
        _verify_dir(manifest, directory, path)
    except BaseException:
        holder.cleanup()
        raise
    return Bundle(path, manifest, bundle_digest(text), signed_by, directory, holder)


def _signer(signature: bytes | None, where) -> str | None:
    """The public key (hex) a ``signature.json`` names, or None when there is none or it is malformed
    (which matters only with trusted keys, and :func:`check_trust` refuses it then)."""
    if signature is None:
        return None
    from edgedl.signing import parse_signature

    try:
        return parse_signature(signature, where)["public_key"]
    except InputFileError:
        return None


def check_trust(manifest_bytes: bytes, signature_bytes: bytes | None, trusted: list[bytes], where) -> None:
    """Refuse unless ``signature_bytes`` is a valid signature of the manifest's digest by a ``trusted`` key."""
    from edgedl.signing import verify_signature

    if signature_bytes is None:
        raise InputFileError(where, f"the bundle is not signed and only bundles signed by a trusted key are accepted "
                                    f"(sign it with: edgedl compile ... --sign KEY)")
    verify_signature(signature_bytes, bundle_digest(manifest_bytes), trusted, where)


def _manifest_bytes(path: Path) -> bytes:
    if not path.exists() and not path.is_symlink():
        raise InputFileError(path, "no such bundle; expected a folder or an archive written by `edgedl compile`")
    data = _member_bytes(path, MANIFEST, required=True)
    return data


def _member_bytes(path: Path, name: str, required: bool) -> bytes | None:
    """The bytes of ``name`` at the root of a bundle folder or archive (a regular file, size-bounded)."""
    not_bundle = f"not an edgedl bundle (no readable {MANIFEST})"
    if path.is_symlink():
        raise InputFileError(path, "the bundle is a symbolic link; pass the bundle itself")
    if path.is_dir():
        f = path / name
        try:
            st = os.lstat(f)
        except FileNotFoundError:
            if required:
                raise InputFileError(path, not_bundle) from None
            return None
        except OSError as e:
            raise InputFileError(path, f"cannot read {name} ({e.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError(path, f"{name} is not a regular file (a link or a device); refusing the bundle")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise InputFileError(path, f"{name} is {st.st_size} bytes; a bundle's is at most {MAX_MANIFEST_BYTES}")
        try:
            return f.read_bytes()
        except OSError as e:
            raise InputFileError(path, f"cannot read {name} ({e.strerror})") from None
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = _find_member(tar, name, path)
            if member is None:
                if required:
                    raise InputFileError(path, not_bundle)
                return None
            if not member.isreg():
                raise InputFileError(path, f"archive member {name} is not a regular file; refusing the bundle")
            if member.size > MAX_MANIFEST_BYTES:
                raise InputFileError(path, f"{name} is {member.size} bytes; a bundle's is at most {MAX_MANIFEST_BYTES}")
            return tar.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError, ValueError):
        raise InputFileError(path, f"{not_bundle}: not a folder or an uncompressed tar archive") from None


def _find_member(tar: tarfile.TarFile, name: str, where) -> tarfile.TarInfo | None:
    found = [m for m in tar.getmembers() if m.name == name]
    if len(found) > 1:
        raise InputFileError(where, f"archive member '{name}' appears {len(found)} times; refusing the bundle")
    return found[0] if found else None


def _parse(text: bytes, where) -> dict:
    def no_constants(name):
        raise ValueError(f"{name} is not a JSON number")

    try:
        manifest = json.loads(text.decode("utf-8"), parse_constant=no_constants)
    except UnicodeDecodeError:
        raise InputFileError(where, f"{MANIFEST} is not UTF-8 text") from None
    except RecursionError:
        raise InputFileError(where, f"{MANIFEST} is nested too deeply to be a manifest") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers with thousands of digits
        raise InputFileError(where, f"{MANIFEST} is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(manifest, dict):
        raise InputFileError(where, f"{MANIFEST} must hold a JSON object, got {type(manifest).__name__}; "
                                    "not an edgedl bundle")
    return manifest


# ---------------------------------------------------------------------------------------------------
# The schema


def _fail(where, field: str, expected: str, got=None) -> InputFileError:
    shown = "" if got is None else f", got {_show(got)}"
    return InputFileError(where, f"{MANIFEST}: {field} must be {expected}{shown}; refusing the bundle")


def _show(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _check_path(p, field: str, where) -> str:
    """A file path inside the bundle: relative, normalised, no '..', no odd characters."""
    if not isinstance(p, str) or not p:
        raise _fail(where, field, "a relative path inside the bundle", p)
    bad = (p.startswith("/") or "\\" in p or "\x00" in p or any(ord(c) < 32 for c in p) or len(p) > 255
           or posixpath.normpath(p) != p or any(part in ("", ".", "..") for part in p.split("/"))
           or p in (MANIFEST, SIGNATURE))
    if bad:
        raise _fail(where, field, "a normalised relative path inside the bundle (no '/' at the start, no '..')", p)
    return p


def validate_manifest(m: dict, where) -> None:
    """The strict schema of a manifest: everything the runtime reads, checked before it is used.

    Raises:
        InputFileError: naming the first field that is missing or of the wrong type.
    """
    version = m.get("format_version")
    if "format_version" not in m:
        raise InputFileError(where, f"{MANIFEST} has no format_version; not an edgedl bundle")
    if not _is_int(version) or version < 1:
        raise _fail(where, "format_version", f"a positive integer (this edgedl reads {FORMAT_VERSION})", version)
    if version > FORMAT_VERSION:
        raise InputFileError(where, f"bundle format version {version} is newer than this edgedl reads "
                                    f"({FORMAT_VERSION}); upgrade edgedl")
    for key, kind in (("backend", str), ("target", dict), ("runtime", dict), ("inputs", list), ("outputs", list),
                      ("files", list)):
        if key not in m:
            raise _fail(where, key, f"present (a {kind.__name__})")
        if not isinstance(m[key], kind):
            raise _fail(where, key, f"a {'JSON object' if kind is dict else 'list' if kind is list else 'string'}",
                        m[key])
    for key in ("source", "options", "toolchain", "selection", "samples", "estimates", "fidelity", "preprocessing"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            raise _fail(where, key, "a JSON object or absent", m[key])
    target = m["target"]
    if not isinstance(target.get("name"), str):
        raise _fail(where, "target.name", "a string", target.get("name"))
    for key in ("cpu", "gpu", "npu", "memory", "tvm"):
        if target.get(key) is not None and not isinstance(target[key], dict):
            raise _fail(where, f"target.{key}", "a JSON object or absent", target[key])
    if (target.get("cpu") or {}).get("arch") is not None and not isinstance(target["cpu"]["arch"], str):
        raise _fail(where, "target.cpu.arch", "a string", target["cpu"]["arch"])

    files = m["files"]
    if not files:
        raise _fail(where, "files", "a non-empty list of the bundle's files with their sha256 (nothing can be "
                                    "verified otherwise)", files)
    if len(files) > MAX_FILES:
        raise _fail(where, "files", f"at most {MAX_FILES} entries", len(files))
    seen = set()
    for i, e in enumerate(files):
        field = f"files[{i}]"
        if not isinstance(e, dict):
            raise _fail(where, field, "an object with path, bytes and sha256", e)
        p = _check_path(e.get("path"), f"{field}.path", where)
        if p.lower() in seen:
            raise _fail(where, f"{field}.path", "listed once", p)
        seen.add(p.lower())
        if not _is_int(e.get("bytes")) or not 0 <= e["bytes"] <= MAX_FILE_BYTES:
            raise _fail(where, f"{field}.bytes", f"an integer from 0 to {MAX_FILE_BYTES}", e.get("bytes"))
        if not isinstance(e.get("sha256"), str) or not _SHA256.match(e["sha256"]):
            raise _fail(where, f"{field}.sha256", "64 lowercase hex digits", e.get("sha256"))
    listed = {e["path"] for e in files}
    dirs = {"/".join(p.split("/")[:k]) for p in listed for k in range(1, p.count("/") + 1)}
    if listed & dirs:
        raise _fail(where, "files", "paths of which none is a folder of another", sorted(listed & dirs)[0])

    runtime = m["runtime"]
    engine = runtime.get("engine")
    if engine not in ENGINES:
        raise _fail(where, "runtime.engine", f"one of {', '.join(ENGINES)}", engine)
    for key in RUNTIME_FILE_KEYS:
        if key in runtime:
            _runtime_file(runtime[key], f"runtime.{key}", listed, where)
    for key in RUNTIME_FILE_LIST_KEYS:
        if key in runtime:
            if not isinstance(runtime[key], list):
                raise _fail(where, f"runtime.{key}", "a list of files listed in files", runtime[key])
            for j, p in enumerate(runtime[key]):
                _runtime_file(p, f"runtime.{key}[{j}]", listed, where)
    needs = {"litert": "model", "tflm": "model", "onnxruntime": "model", "ethos-u": "model", "tvm": "library"}[engine]
    if needs not in runtime:
        raise _fail(where, f"runtime.{needs}", f"present for engine {engine} (a file listed in files)")
    if "arena_size" in runtime and runtime["arena_size"] is not None and (
            not _is_int(runtime["arena_size"]) or not 0 < runtime["arena_size"] <= 1 << 32):
        raise _fail(where, "runtime.arena_size", "a positive number of bytes up to 4 GiB, or null",
                    runtime["arena_size"])
    if "xnnpack" in runtime and not isinstance(runtime["xnnpack"], bool):
        raise _fail(where, "runtime.xnnpack", "true or false", runtime["xnnpack"])
    for key in ("device", "accelerator"):
        if key in runtime and not isinstance(runtime[key], str):
            raise _fail(where, f"runtime.{key}", "a string", runtime[key])

    for key in ("inputs", "outputs"):
        specs = m[key]
        if not specs or len(specs) > 64:
            raise _fail(where, key, "a list of 1 to 64 tensor specs", specs)
        for i, s in enumerate(specs):
            _tensor_spec(s, f"{key}[{i}]", where)


def _runtime_file(p, field: str, listed: set, where) -> None:
    _check_path(p, field, where)
    if p not in listed:
        raise _fail(where, field, "a file listed in files (with its sha256), so that it is verified before it "
                                  "is opened", p)


def _tensor_spec(s, field: str, where) -> None:
    if not isinstance(s, dict):
        raise _fail(where, field, "an object with name, shape and dtype", s)
    if not isinstance(s.get("name"), str) or len(s["name"]) > 1024:
        raise _fail(where, f"{field}.name", "a string of at most 1024 characters", s.get("name"))
    shape = s.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 8
            or not all(_is_int(d) and 1 <= d <= 1 << 24 for d in shape)
            or math.prod(shape) > 1 << 28):
        raise _fail(where, f"{field}.shape", "a list of 1 to 8 positive dimensions of at most 2**28 elements in all",
                    shape)
    if s.get("dtype") not in DTYPES:
        raise _fail(where, f"{field}.dtype", f"one of {', '.join(DTYPES)}", s.get("dtype"))
    if "scale" in s and (not _is_number(s["scale"]) or s["scale"] < 0):
        raise _fail(where, f"{field}.scale", "a finite number >= 0", s["scale"])
    if "zero_point" in s and (not _is_int(s["zero_point"]) or not -(1 << 31) <= s["zero_point"] < 1 << 31):
        raise _fail(where, f"{field}.zero_point", "a 32-bit integer", s["zero_point"])


# ---------------------------------------------------------------------------------------------------
# Verifying files


def _verify_dir(manifest: dict, directory: Path, where) -> None:
    """Every listed file is a regular file inside ``directory`` (no link on the way) with its sha256."""
    root = os.path.realpath(directory)
    for e in manifest["files"]:
        rel = e["path"]
        f = directory / rel
        parent = directory
        for part in rel.split("/"):
            parent = parent / part
            try:
                st = os.lstat(parent)
            except FileNotFoundError:
                raise InputFileError(where, f"bundle file '{rel}' is missing") from None
            except OSError as err:
                raise InputFileError(where, f"bundle file '{rel}' cannot be read ({err.strerror})") from None
            if stat.S_ISLNK(st.st_mode):
                raise InputFileError(where, f"bundle file '{rel}' is or passes through a symbolic link; "
                                            "refusing the bundle")
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError(where, f"bundle file '{rel}' is not a regular file; refusing the bundle")
        if os.path.commonpath([root, os.path.realpath(f)]) != root:
            raise InputFileError(where, f"bundle file path '{rel}' escapes the bundle")
        if st.st_size != e["bytes"]:
            raise InputFileError(where, f"bundle file '{rel}' does not match its size in the manifest ({st.st_size} "
                                        f"bytes, listed with {e['bytes']}): the bundle was changed after compiling; "
                                        "refusing to load it")
        digest = _io.sha256_file(f)
        if digest != e["sha256"]:
            raise InputFileError(where, f"bundle file '{rel}' does not match its sha256 in the manifest "
                                        f"(expected {e['sha256'][:12]}..., got {digest[:12]}...): "
                                        "the bundle was changed after compiling; refusing to load it")


def _unpack(path: Path, manifest: dict, directory: Path) -> None:
    """Check every archive member first (regular, listed, normalised, sized as listed), then write them."""
    wanted = {e["path"]: e for e in manifest["files"]}
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = tar.getmembers()
            found = {}
            for m in members:
                name = m.name
                if name in (MANIFEST, SIGNATURE):
                    if not m.isreg():
                        raise InputFileError(path, f"archive member {name} is not a regular file; refusing the bundle")
                    continue
                if (name.startswith("/") or ".." in name.split("/") or posixpath.normpath(name) != name
                        or "\\" in name or "\x00" in name):
                    raise InputFileError(path, f"archive member '{name[:80]}' has a path that is not a normalised "
                                               "relative path inside the bundle; refusing the bundle")
                if not m.isreg():
                    kind = "a link" if m.issym() or m.islnk() else "a device" if m.isdev() else \
                        "a folder" if m.isdir() else "not a regular file"
                    raise InputFileError(path, f"archive member '{name[:80]}' is {kind}; a bundle holds regular "
                                               "files only")
                if name not in wanted:
                    raise InputFileError(path, f"archive member '{name[:80]}' is not listed in the manifest; "
                                               "refusing the bundle")
                if name in found:
                    raise InputFileError(path, f"archive member '{name[:80]}' appears twice; refusing the bundle")
                if m.size != wanted[name]["bytes"]:
                    raise InputFileError(path, f"bundle file '{name}' does not match its size in the manifest "
                                               f"({m.size} bytes, listed with {wanted[name]['bytes']}): the bundle "
                                               "was changed after compiling; refusing to load it")
                found[name] = m
            missing = sorted(set(wanted) - set(found))
            if missing:
                raise InputFileError(path, f"bundle file '{missing[0]}' is missing from the archive")
            for name, m in found.items():
                dst = directory / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with open(dst, "xb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise InputFileError(path, f"the archive cannot be read ({str(e)[:120]})") from None
