"""Prepare what the GPU run carries: ``carry/gpu/`` (run HERE, on the development machine; needs PyPI).

    .venv/bin/python scripts/gpu_bundle.py            # build what is missing or out of date, print sizes
    .venv/bin/python scripts/gpu_bundle.py --force    # rebuild every part
    .venv/bin/python scripts/gpu_bundle.py --check    # only print the sizes of what would travel

The GPU machine (Python 3.12, torch, transformers, pandas, pillow, grpcio, protobuf, ...; see
/work/.library/device/KINDS.md) lacks the Triton server, numpy<2 for its Python stub, tritonclient
and its HTTP stack, torchao and plotly, and has no internet. This script makes, in ``carry/gpu/``:

* ``tritonserver.tar.xz``: the Triton 2.51 server parts of the ``nvidia-pytriton`` wheel, laid out as
  that wheel installs them so that ``services.serving.embedded_triton.TritonDistribution.locate`` finds them
  once unpacked into a site-packages folder: ``pytriton/__init__.py`` (a one-line placeholder: the
  wheel's Python API is not carried), ``pytriton/tritonserver/bin/tritonserver``,
  ``pytriton/tritonserver/backends/python/``, ``pytriton/tritonserver/python_backend_stubs/3.12/``
  and ``nvidia_pytriton.libs/`` without its bundled libpython (the machine's own libpython3.12 is
  used). Taken from the wheel installed in this virtualenv (the version pinned in
  requirements.txt), else from ``pip download``.
* ``site312.tar.xz``: the cp312 packages the GPU run needs and the machine lacks (or has in another
  version), installed with ``pip install --target`` from PyPI wheels for CPython 3.12 manylinux:
  numpy 1.26.4, tritonclient and its HTTP/gRPC stack, torchao, plotly. Test folders are left
  out and debug information is stripped from extension modules that no tool patched (no RPATH).
* ``fonts.tar.xz``: the six DejaVu fonts the label generator draws with (``carry/fonts``, else
  ``/usr/share/fonts/truetype/dejavu``).
* ``MANIFEST.json``: what each part holds (package versions), its size and sha256.

On the GPU machine ``scripts/gpu_env.sh`` unpacks them (see its header). What travels to the GPU
machine (git-tracked files, untracked files that git does not ignore, and ``carry/gpu``) must stay
within 64 MiB: the total is printed, and the script fails above it (and warns above 58 MiB).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "carry" / "gpu"
CACHE = Path(os.environ.get("QWEN_BUNDLE_CACHE", Path.home() / ".cache" / "qwen-gpu-bundle"))
MIB = 2**20
LIMIT_MIB = 64.0
TARGET_MIB = 58.0
PY = "3.12"
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")
# Pinned in requirements.txt: their versions are read from there.
PINNED = ("numpy", "tritonclient", "torchao", "plotly", "nvidia-pytriton")
# Their dependencies that the GPU machine lacks or may hold in another version: the versions installed
# in this virtualenv (the ones the project is tested with).
#   tritonclient.http: geventhttpclient -> gevent (greenlet, zope.event, zope.interface), brotli;
#   python-rapidjson; tritonclient.utils: ml_dtypes (<= 0.5.4, and one that works with numpy 1.26);
#   tritonclient.grpc: grpcio >= 1.81.1 and protobuf >= 6.33.5 (its generated code checks both).
DEPENDENCIES = ("geventhttpclient", "gevent", "greenlet", "zope.event", "zope.interface", "brotli",
                "python-rapidjson", "ml_dtypes", "grpcio", "protobuf")
SITE_PACKAGES = ("numpy", "tritonclient", "torchao", "plotly") + DEPENDENCIES
STUB_PY = "3.12"
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
         "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")
PYTRITON_INIT = ('"""Placeholder written by scripts/gpu_bundle.py: only the Triton server of the nvidia-pytriton '
                 'wheel was carried (its Python API was not)."""\n')


def say(msg: str) -> None:
    print(f"[gpu_bundle] {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"[gpu_bundle] ERROR: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    say("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if proc.returncode != 0:
        fail(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def requirement_pins(path: Path = ROOT / "requirements.txt") -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines (extras dropped, names normalised)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line or line.startswith("-"):
            continue
        name, version = line.split("==", 1)
        pins[normalise(name.split("[", 1)[0])] = version.strip()
    return pins


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def wanted_versions() -> dict[str, str]:
    pins = requirement_pins()
    versions = {}
    for name in PINNED:
        if normalise(name) not in pins:
            fail(f"{name} is not pinned in requirements.txt")
        versions[name] = pins[normalise(name)]
    for name in DEPENDENCIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            fail(f"{name} is not installed in {sys.prefix}: run scripts/setup.sh (or pip install -r requirements.txt)")
    return versions


def tar_xz(src_dir: Path, dest: Path) -> None:
    """A reproducible tar.xz of the contents of ``src_dir`` (sorted names, no owners, fixed times)."""
    os.chmod(src_dir, 0o755)  # the archive's "." entry: unpacking must not make the target folder private
    tmp = dest.with_suffix(".partial")
    with open(tmp, "wb") as out:
        tar = subprocess.Popen(["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0",
                                "-C", str(src_dir), "-cf", "-", "."], stdout=subprocess.PIPE)
        xz = subprocess.run(["xz", "-9e", "-T2", "-c"], stdin=tar.stdout, stdout=out)
        tar.stdout.close()
        if tar.wait() != 0 or xz.returncode != 0:
            fail(f"tar/xz of {src_dir} failed")
    tmp.replace(dest)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# --------------------------------------------------------------------------- the Triton server


def pytriton_root(version: str, work: Path) -> Path:
    """A folder holding ``pytriton/`` and ``nvidia_pytriton.libs/`` of the pinned wheel."""
    spec = importlib.util.find_spec("pytriton")
    try:
        installed = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if spec is not None and spec.submodule_search_locations and installed == version:
        root = Path(list(spec.submodule_search_locations)[0]).parent
        say(f"nvidia-pytriton {installed}: taking the server from the installed wheel in {root}")
        return root
    say(f"nvidia-pytriton {version} is not installed here (found {installed}): downloading the wheel")
    dl = CACHE / "wheels"
    dl.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dl.glob(f"nvidia_pytriton-{version}-*.whl"))
    if not wheels:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", PY,
             "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dl),
             f"nvidia-pytriton=={version}"])
        wheels = sorted(dl.glob(f"nvidia_pytriton-{version}-*.whl"))
    if not wheels:
        fail(f"no nvidia_pytriton-{version} wheel in {dl}")
    root = work / "pytriton-wheel"
    with zipfile.ZipFile(wheels[0]) as z:
        for member in z.namelist():
            if member.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
                z.extract(member, root)
                info = z.getinfo(member)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(root / member, mode)
    return root


def build_tritonserver(dest: Path, version: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        work = Path(tmp)
        src = pytriton_root(version, work)
        stage = work / "stage"
        ts = src / "pytriton" / "tritonserver"
        parts = [
            (ts / "bin" / "tritonserver", stage / "pytriton/tritonserver/bin/tritonserver"),
            (ts / "backends" / "python" / "libtriton_python.so",
             stage / "pytriton/tritonserver/backends/python/libtriton_python.so"),
            (ts / "backends" / "python" / "triton_python_backend_utils.py",
             stage / "pytriton/tritonserver/backends/python/triton_python_backend_utils.py"),
            (ts / "python_backend_stubs" / STUB_PY / "triton_python_backend_stub",
             stage / f"pytriton/tritonserver/python_backend_stubs/{STUB_PY}/triton_python_backend_stub"),
        ]
        for a, b in parts:
            if not a.is_file():
                fail(f"the nvidia-pytriton wheel lacks {a}")
            b.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(a, b)
        (stage / "pytriton" / "__init__.py").write_text(PYTRITON_INIT)
        libs = src / "nvidia_pytriton.libs"
        if not libs.is_dir():
            fail(f"no {libs}")
        (stage / "nvidia_pytriton.libs").mkdir()
        left_out = []
        for lib in sorted(libs.iterdir()):
            if lib.name.startswith("libpython"):
                left_out.append(lib.name)
                continue
            shutil.copy2(lib, stage / "nvidia_pytriton.libs" / lib.name)
        for exe in (parts[0][1], parts[3][1]):
            exe.chmod(0o755)
        raw = dir_size(stage)
        say(f"tritonserver: {raw / MIB:.1f} MiB unpacked; compressing (xz -9e, about a minute)...")
        tar_xz(stage, dest)
        return {"nvidia-pytriton": version, "stub_python": STUB_PY, "unpacked_bytes": raw,
                "left_out": left_out, "layout": "unpack into a site-packages folder"}


# --------------------------------------------------------------------------- the Python packages


def has_rpath(path: Path) -> bool:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    return "(RPATH)" in out or "(RUNPATH)" in out


def build_site(dest: Path, versions: dict[str, str], torchao_wheel: Path | None) -> dict:
    dl = CACHE / "wheels"
    dl.mkdir(parents=True, exist_ok=True)
    specs = [f"{n}=={versions[n]}" for n in SITE_PACKAGES if not (n == "torchao" and torchao_wheel)]
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    common = ["--no-deps", "--only-binary=:all:", "--python-version", PY, "--implementation", "cp", *platform_args]
    run([sys.executable, "-m", "pip", "download", "-q", *common, "-d", str(dl), *specs])
    files = []
    for n in SITE_PACKAGES:
        if n == "torchao" and torchao_wheel:
            files.append(torchao_wheel)
            continue
        stem = normalise(n).replace("-", "_")
        hits = [p for p in dl.glob("*.whl")
                if normalise(p.name.split("-")[0]).replace("-", "_") == stem and p.name.split("-")[1] == versions[n]]
        if not hits:
            fail(f"pip download gave no wheel for {n}=={versions[n]} in {dl}")
        files.append(sorted(hits)[0])
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-site-") as tmp:
        stage = Path(tmp) / "site"
        run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", str(stage), *common,
             *map(str, files)])
        removed = 0
        for pattern in ("tests", "test", "__pycache__"):
            for p in sorted(stage.rglob(pattern), reverse=True):
                if p.is_dir():
                    removed += dir_size(p)
                    shutil.rmtree(p)
        for extra in ("share", "bin"):  # plotly's Jupyter lab extension; console scripts of the host's pip
            if (stage / extra).is_dir():
                removed += dir_size(stage / extra)
                shutil.rmtree(stage / extra)
        stripped = []
        for so in sorted(stage.rglob("*.so")):
            info = subprocess.run(["file", "-b", str(so)], capture_output=True, text=True).stdout
            if "debug_info" in info and not has_rpath(so):
                before = so.stat().st_size
                subprocess.run(["strip", "--strip-debug", str(so)], check=True)
                stripped.append(f"{so.relative_to(stage)} ({before / MIB:.1f} -> {so.stat().st_size / MIB:.1f} MiB)")
        raw = dir_size(stage)
        say(f"site312: {raw / MIB:.1f} MiB unpacked ({removed / MIB:.1f} MiB of tests left out); "
            f"debug info stripped from {len(stripped)} module(s); compressing (xz -9e, about a minute)...")
        tar_xz(stage, dest)
    return {"python": PY, "packages": {n: versions[n] for n in SITE_PACKAGES},
            "wheels": [p.name for p in files], "stripped": stripped, "unpacked_bytes": raw}


def build_fonts(dest: Path) -> dict:
    sources = [ROOT / "carry" / "fonts", Path("/usr/share/fonts/truetype/dejavu")]
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-fonts-") as tmp:
        stage = Path(tmp)
        for name in FONTS:
            src = next((d / name for d in sources if (d / name).is_file()), None)
            if src is None:
                fail(f"{name} not found in {', '.join(map(str, sources))}: apt-get install fonts-dejavu-core")
            shutil.copy2(src, stage / name)
        tar_xz(stage, dest)
    return {"fonts": list(FONTS)}


# --------------------------------------------------------------------------- what travels


def git_files(*args: str) -> list[Path]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", *args], capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p]


def travelling_bytes(carry_dirs: list[Path]) -> dict[str, int]:
    def size(paths: list[Path]) -> int:
        return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())

    tracked = size(git_files())
    untracked = size(git_files("--others", "--exclude-standard"))
    carried = sum(dir_size(d) for d in carry_dirs if d.is_dir())
    return {"tracked": tracked, "untracked_not_ignored": untracked, "carried": carried,
            "total": tracked + untracked + carried}


def report_sizes(out: Path) -> int:
    sizes = travelling_bytes([out])
    for part in sorted(out.glob("*")):
        say(f"  {part.relative_to(ROOT)}: {part.stat().st_size / MIB:6.2f} MiB")
    say(f"travels: tracked {sizes['tracked'] / MIB:.2f} MiB + untracked-not-ignored "
        f"{sizes['untracked_not_ignored'] / MIB:.2f} MiB + {out.relative_to(ROOT)} {sizes['carried'] / MIB:.2f} MiB "
        f"= {sizes['total'] / MIB:.2f} MiB (limit {LIMIT_MIB:.0f} MiB, aim <= {TARGET_MIB:.0f} MiB)")
    if sizes["total"] > LIMIT_MIB * MIB:
        print(f"[gpu_bundle] ERROR: {sizes['total'] / MIB:.2f} MiB would travel: over the device tool's "
              f"{LIMIT_MIB:.0f} MiB limit", file=sys.stderr)
        return 1
    if sizes["total"] > TARGET_MIB * MIB:
        say(f"WARNING: over the {TARGET_MIB:.0f} MiB aim: little room is left for files others add")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--force", action="store_true", help="rebuild every part")
    p.add_argument("--check", action="store_true", help="only print the sizes of what would travel")
    args = p.parse_args(argv)
    out = args.out.resolve()
    if args.check:
        return report_sizes(out)
    for tool in ("tar", "xz", "strip", "readelf", "file", "git"):
        if shutil.which(tool) is None:
            fail(f"{tool} is not installed here (apt-get install binutils xz-utils file tar git)")
    if not str(out).startswith(str(ROOT / "carry")):
        say(f"WARNING: {out} is outside carry/ (git-ignored): check that git ignores it")
    out.mkdir(parents=True, exist_ok=True)
    versions = wanted_versions()
    torchao_wheel = next(iter(sorted((ROOT / "carry" / "wheels").glob(f"torchao-{versions['torchao']}-*.whl"))), None)
    manifest_path = out / "MANIFEST.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    parts = {
        "tritonserver.tar.xz": (lambda d: build_tritonserver(d, versions["nvidia-pytriton"]),
                                {"nvidia-pytriton": versions["nvidia-pytriton"], "stub": STUB_PY, "v": 1}),
        "site312.tar.xz": (lambda d: build_site(d, versions, torchao_wheel),
                           {"packages": {n: versions[n] for n in SITE_PACKAGES}, "v": 1}),
        "fonts.tar.xz": (build_fonts, {"fonts": list(FONTS), "v": 2}),
    }
    manifest = {"made_by": "scripts/gpu_bundle.py", "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "parts": {}}
    for name, (build, recipe) in parts.items():
        dest = out / name
        prev = old.get("parts", {}).get(name, {})
        if (not args.force and dest.is_file() and prev.get("recipe") == recipe
                and prev.get("sha256") == sha256(dest)):
            say(f"{name}: up to date ({dest.stat().st_size / MIB:.2f} MiB)")
            manifest["parts"][name] = prev
            continue
        t0 = time.perf_counter()
        say(f"{name}: building...")
        info = build(dest)
        manifest["parts"][name] = {"recipe": recipe, "bytes": dest.stat().st_size, "sha256": sha256(dest), **info}
        say(f"{name}: {dest.stat().st_size / MIB:.2f} MiB in {time.perf_counter() - t0:.0f} s")
    for stale in out.glob("*"):
        if stale.name not in parts and stale.name != "MANIFEST.json":
            say(f"removing {stale.name} (not part of the bundle)")
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return report_sizes(out)


if __name__ == "__main__":
    raise SystemExit(main())
