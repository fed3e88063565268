"""The bundle trust model: a bundle opens only files it lists and verifies, refuses what fails the schema
in one line naming the field, unpacks archives only after checking every member, and with trusted keys
opens only bundles signed by one of them. Compile never destroys what is at its output path."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

import edgedl.runtime as rt
from edgedl.bundle import MANIFEST, SIGNATURE, digest_of, open_bundle, read_manifest
from edgedl.compile import CompileOptions, compile_model
from edgedl.errors import InputFileError, OptionError


@pytest.fixture(scope="module")
def bundle(trained_lenet, tmp_path_factory):
    """A LiteRT bundle folder of the int8 LeNet (read-only: copy it before tampering)."""
    out = tmp_path_factory.mktemp("trust") / "lenet.edgedl"
    compile_model(str(trained_lenet["int8"]), "x86_64", str(out), CompileOptions(backend="litert", num_samples=20))
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from edgedl.signing import generate_keypair, load_public_keys

    d = tmp_path_factory.mktemp("keys")
    release = generate_keypair(d / "release")
    other = generate_keypair(d / "other")
    return {"release": release, "other": other, "release_pub": load_public_keys([release[1]])[0],
            "other_pub": load_public_keys([other[1]])[0]}


def edgedl(*args, cwd=None):
    """The real CLI in a child process: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "edgedl.cli.main", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=120)
    return p.returncode, p.stdout, p.stderr


def tampered(bundle, tmp_path, change):
    """A copy of the bundle whose manifest ``change(manifest)`` edited (or replaced by the text it returns)."""
    copy = tmp_path / "t.edgedl"
    shutil.copytree(bundle, copy)
    m = json.loads((copy / MANIFEST).read_text())
    text = change(m)
    (copy / MANIFEST).write_text(text if isinstance(text, str) else json.dumps(m))
    return copy


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# -- paths the runtime opens --------------------------------------------------------------------------


def test_a_runtime_model_outside_the_bundle_is_refused_before_it_is_opened(bundle, tmp_path, trained_lenet):
    outside = tmp_path / "other.tflite"
    shutil.copyfile(trained_lenet["int8"], outside)  # a valid model: it would load and run
    for where in (str(outside), "../other.tflite"):
        b = tampered(bundle, tmp_path / where.replace("/", "_"), lambda m: m["runtime"].update(model=where))
        with pytest.raises(InputFileError, match=r"runtime\.model must be a normalised relative path"):
            rt.load(b)
        code, out, err = edgedl("bench", b, "--runs", "5", "--repeats", "1")
        assert code != 0 and "runtime.model" in one_error_line(err)


def test_a_runtime_file_must_be_one_of_the_verified_files(bundle, tmp_path):
    (bundle.parent / "unlisted").mkdir(exist_ok=True)
    b = tampered(bundle, tmp_path, lambda m: m["runtime"].update(model="copy.tflite"))
    shutil.copyfile(b / "model.tflite", b / "copy.tflite")  # inside, but never verified
    with pytest.raises(InputFileError, match=r"runtime\.model must be a file listed in files"):
        rt.load(b)


def test_a_foreign_library_is_never_loaded(bundle, tmp_path):
    """runtime.library naming a shared object outside: refused, and its constructor never runs."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler")
    sentinel = tmp_path / "pwned"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                   f'{{ FILE *f = fopen("{sentinel}", "w"); if (f) fclose(f); }}\n')
    evil = tmp_path / "evil.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(evil), str(src)], check=True)

    def to_tvm(m):
        m["runtime"] = {"engine": "tvm", "library": str(evil), "device": "cpu"}

    b = tampered(bundle, tmp_path, to_tvm)
    with pytest.raises(InputFileError, match=r"runtime\.library"):
        rt.load(b)
    code, _, err = edgedl("bench", b, "--runs", "5", "--repeats", "1")
    assert code != 0 and "runtime.library" in one_error_line(err)
    assert not sentinel.exists()


@pytest.mark.parametrize("files", [[], {}, None, "model.tflite"])
def test_a_manifest_that_lists_no_files_is_refused(bundle, tmp_path, files):
    b = tampered(bundle, tmp_path, lambda m: m.update(files=files))
    with pytest.raises(InputFileError, match=r"manifest\.json: files must be"):
        rt.load(b)


def test_a_linked_file_in_a_bundle_folder_is_refused(bundle, tmp_path):
    b = tampered(bundle, tmp_path, lambda m: None)
    real = tmp_path / "elsewhere.tflite"
    os.replace(b / "model.tflite", real)
    os.symlink(real, b / "model.tflite")  # same bytes, same sha256, but outside
    with pytest.raises(InputFileError, match="symbolic link"):
        open_bundle(b)


# -- the schema ---------------------------------------------------------------------------------------

def _drop(d, key):
    del d[key]


def _deep(n):
    return "[" * n + "]" * n


BAD_MANIFESTS = {
    "format_version is a string": (lambda m: m.update(format_version="1"), "format_version"),
    "format_version missing": (lambda m: _drop(m, "format_version"), "format_version"),
    "format_version from the future": (lambda m: m.update(format_version=99), "upgrade edgedl"),
    "runtime missing": (lambda m: _drop(m, "runtime"), "runtime"),
    "runtime is a list": (lambda m: m.update(runtime=[]), "runtime"),
    "unknown engine": (lambda m: m["runtime"].update(engine="bash"), "runtime.engine"),
    "model is a number": (lambda m: m["runtime"].update(model=7), "runtime.model"),
    "model missing": (lambda m: _drop(m["runtime"], "model"), "runtime.model"),
    "arena_size negative": (lambda m: m["runtime"].update(engine="tflm", arena_size=-5), "runtime.arena_size"),
    "arena_size huge": (lambda m: m["runtime"].update(engine="tflm", arena_size=10 ** 30), "runtime.arena_size"),
    "inputs empty": (lambda m: m.update(inputs=[]), "inputs"),
    "inputs a dict": (lambda m: m.update(inputs={}), "inputs"),
    "input shape negative": (lambda m: m["inputs"][0].update(shape=[1, -28, 28, 1]), "inputs[0].shape"),
    "input shape huge": (lambda m: m["inputs"][0].update(shape=[1, 10 ** 6, 10 ** 6]), "inputs[0].shape"),
    "input shape strings": (lambda m: m["inputs"][0].update(shape=["1"]), "inputs[0].shape"),
    "input dtype unknown": (lambda m: m["inputs"][0].update(dtype="object"), "inputs[0].dtype"),
    "output scale a string": (lambda m: m["outputs"][0].update(scale="x"), "outputs[0].scale"),
    "zero point a float": (lambda m: m["outputs"][0].update(zero_point=0.5), "outputs[0].zero_point"),
    "file size a string": (lambda m: m["files"][0].update(bytes="1"), "files[0].bytes"),
    "sha256 short": (lambda m: m["files"][0].update(sha256="abc"), "files[0].sha256"),
    "file entry a string": (lambda m: m.update(files=["model.tflite"]), "files[0]"),
    "file listed twice": (lambda m: m.update(files=m["files"] * 2), "files[1].path"),
    "file path absolute": (lambda m: m["files"][0].update(path="/etc/passwd"), "files[0].path"),
    "file path dotdot": (lambda m: m["files"][0].update(path="a/../../x"), "files[0].path"),
    "target a string": (lambda m: m.update(target="x86_64"), "target"),
    "target name missing": (lambda m: _drop(m["target"], "name"), "target.name"),
    "target arch a list": (lambda m: m["target"]["cpu"].update(arch=[]), "target.cpu.arch"),
    "samples a list": (lambda m: m.update(samples=[1]), "samples"),
    "a JSON list": (lambda m: "[]", "JSON object"),
    "nested 100,000 deep": (lambda m: _deep(100_000), "nested too deeply"),
    "a 5,000-digit number": (lambda m: json.dumps(m).replace('"format_version": 1', '"format_version": ' + "9" * 5000),
                             "not valid JSON"),
    "NaN": (lambda m: json.dumps(m).replace('"scale": 0.0', '"scale": NaN', 1), "not valid JSON"),
    "not JSON": (lambda m: "{", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_malformed_manifest_is_one_error_naming_the_field(bundle, tmp_path, case):
    change, field = BAD_MANIFESTS[case]
    b = tampered(bundle, tmp_path, change)
    with pytest.raises(InputFileError) as e:
        rt.load(b)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_bench_on_a_malformed_manifest_exits_with_one_line(bundle, tmp_path):
    b = tampered(bundle, tmp_path, lambda m: m["runtime"].update(engine="tflm", arena_size=-5))
    code, _, err = edgedl("bench", b, "--runs", "5", "--repeats", "1")
    assert code == 1 and "runtime.arena_size must be a positive number of bytes" in one_error_line(err)


# -- archives -----------------------------------------------------------------------------------------

def _archive(tmp_path, bundle, extra):
    """An archive of the bundle with extra members: [(TarInfo, bytes or None)]."""
    path = tmp_path / "a.edgedl"
    with tarfile.open(path, "w") as tar:
        for name in (MANIFEST, "model.tflite"):
            tar.add(bundle / name, arcname=name)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name, data=b"x", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name,kind,link,message", [
    ("../../escaped", tarfile.REGTYPE, "", "not a normalised relative path"),
    ("/tmp/edgedl-absolute-escape", tarfile.REGTYPE, "", "not a normalised relative path"),
    ("link", tarfile.SYMTYPE, "/etc/passwd", "is a link"),
    ("hard", tarfile.LNKTYPE, "model.tflite", "is a link"),
    ("dev", tarfile.CHRTYPE, "", "is a device"),
    ("extra.bin", tarfile.REGTYPE, "", "not listed in the manifest"),
])
def test_archive_members_are_checked_before_anything_is_written(bundle, tmp_path, name, kind, link, message):
    archive = _archive(tmp_path, bundle, [_member(name, kind=kind, link=link)])
    before = set(os.listdir(tmp_path))
    with pytest.raises(InputFileError, match=message):
        open_bundle(archive)
    assert set(os.listdir(tmp_path)) == before
    assert not os.path.exists("/tmp/edgedl-absolute-escape")


def test_an_archive_member_that_replaces_the_model_by_a_link_is_refused(bundle, tmp_path):
    path = tmp_path / "a.edgedl"
    with tarfile.open(path, "w") as tar:
        tar.add(bundle / MANIFEST, arcname=MANIFEST)
        info, _ = _member("model.tflite", kind=tarfile.SYMTYPE, link="/etc/passwd")
        tar.addfile(info)
    with pytest.raises(InputFileError, match="'model.tflite' is a link"):
        open_bundle(path)


def test_a_compressed_or_garbage_archive_is_not_a_bundle(tmp_path):
    path = tmp_path / "x.edgedl"
    path.write_bytes(b"\x1f\x8b" + os.urandom(300))
    with pytest.raises(InputFileError, match="not an edgedl bundle"):
        read_manifest(path)


# -- signatures ---------------------------------------------------------------------------------------

def test_a_signed_bundle_opens_only_with_a_trusted_key(trained_lenet, keys, tmp_path):
    for archive in (False, True):
        out = tmp_path / f"signed-{archive}.edgedl"
        r = compile_model(str(trained_lenet["int8"]), "x86_64", str(out),
                          CompileOptions(backend="litert", num_samples=20, archive=archive,
                                         sign_key=str(keys["release"][0])))
        assert r.digest == digest_of(out)
        model = rt.load(out, trusted=[keys["release_pub"]])
        assert model.predict(trained_lenet_sample()).shape == (1, 10)
        with pytest.raises(InputFileError, match="not trusted here"):
            open_bundle(out, trusted=[keys["other_pub"]])
        rt.load(out)  # without trusted keys a signature is not needed
        code, text, err = edgedl("inspect", out)
        from edgedl.signing import key_id

        assert code == 0 and f"digest: sha256:{r.digest} (signed by key {key_id(keys['release_pub'])}" in text, err


def trained_lenet_sample():
    import numpy as np

    return np.zeros((1, 28, 28, 1), np.float32)


def test_unsigned_and_re_signed_bundles_are_refused_by_a_trusting_loader(bundle, keys, tmp_path):
    with pytest.raises(InputFileError, match="not signed"):
        open_bundle(bundle, trusted=[keys["release_pub"]])
    # A valid signature of another manifest, copied into a tampered bundle.
    signed = tmp_path / "signed.edgedl"
    shutil.copytree(bundle, signed)
    from edgedl.bundle import bundle_digest
    from edgedl.signing import sign_digest

    (signed / SIGNATURE).write_bytes(sign_digest(keys["release"][0], bundle_digest((signed / MANIFEST).read_bytes())))
    open_bundle(signed, trusted=[keys["release_pub"]])
    m = json.loads((signed / MANIFEST).read_text())
    m["runtime"]["xnnpack"] = False
    (signed / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(InputFileError, match="changed after signing"):
        open_bundle(signed, trusted=[keys["release_pub"]])
    (signed / SIGNATURE).write_text('{"algorithm": "ed25519"}')
    with pytest.raises(InputFileError, match="signature.json: digest must be"):
        open_bundle(signed, trusted=[keys["release_pub"]])


def test_key_files_are_checked(keys, tmp_path):
    from edgedl.signing import load_public_keys

    with pytest.raises(InputFileError, match="is a private key"):
        load_public_keys([keys["release"][0]])
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(InputFileError, match="not a PEM public key"):
        load_public_keys([tmp_path / "junk.pub"])
    code, _, err = edgedl("keygen", keys["release"][0].with_suffix(""))
    assert code == 2 and "exists; pass --force" in one_error_line(err)


# -- outputs ------------------------------------------------------------------------------------------

def test_compile_never_replaces_a_folder_that_is_not_a_bundle(trained_lenet, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for extra in ([], ["--force"], ["--archive", "--force"]):
        code, _, err = edgedl("compile", trained_lenet["int8"], "-t", "x86_64", "-b", "litert", "-o", mine, *extra)
        assert code == 2 and "is a folder that is not an edgedl bundle" in one_error_line(err)
    assert os.listdir(mine) == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "years of work"


def test_an_existing_bundle_is_replaced_only_with_force_and_whole(trained_lenet, tmp_path):
    out = tmp_path / "b.edgedl"
    opts = dict(backend="litert", num_samples=20)
    compile_model(str(trained_lenet["int8"]), "x86_64", str(out), CompileOptions(**opts))
    before = (out / MANIFEST).read_bytes()
    with pytest.raises(OptionError, match="existing bundle; pass --force"):
        compile_model(str(trained_lenet["int8"]), "x86_64", str(out), CompileOptions(**opts))
    assert (out / MANIFEST).read_bytes() == before
    compile_model(str(trained_lenet["int8"]), "x86_64", str(out), CompileOptions(**opts, force=True, archive=True))
    assert out.is_file() and tarfile.is_tarfile(out)  # the folder became an archive, complete
    compile_model(str(trained_lenet["int8"]), "x86_64", str(out), CompileOptions(**opts, force=True))
    assert out.is_dir() and (out / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.edgedl"]  # nothing left beside it


@pytest.mark.parametrize("args,message", [
    (["-o", ""], "--output is empty"),
    (["--data-dir", "/nonexistent-edgedl-data"], "does not exist"),
])
def test_bad_output_and_data_paths_are_one_line_errors(trained_lenet, tmp_path, args, message):
    code, _, err = edgedl("compile", trained_lenet["int8"], "-t", "x86_64", "-b", "litert", *args, cwd=tmp_path)
    assert code == 2 and message in one_error_line(err)
    assert os.listdir(tmp_path) == []


def test_an_unwritable_output_is_refused_before_any_work(trained_lenet, tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        out = blocker / "b.edgedl"  # a folder path through a file: cannot be written, even as root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "b.edgedl"
    code, _, err = edgedl("compile", trained_lenet["int8"], "-t", "x86_64", "-b", "litert", "-o", out)
    assert code == 2 and "cannot be written" in one_error_line(err)
