"""Untrusted files and arguments through the `vl2spike` command: every bad input ends with exit code 2,
one line on stderr naming it, no traceback, and nothing on disk changed.

Most cases call the CLI's `main` in this process (a subprocess costs seconds on 2 shared cores);
a few run the real command, where a traceback or a usage block would really reach the terminal.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from safetensors.torch import save_file

from helpers import jpeg_size_bomb, tiny_student, write_tiny_checkpoint
from test_cli import VL2SPIKE, one_error_line, write_traverse
from test_place_map import as_format_1
from vl2spike_ros.cli import main
from vl2spike_ros.core.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, fingerprint_of
from vl2spike_ros.sources.bags import IMAGE, TYPESTORE
from vl2spike_ros.sources.image_folders import ImageFolderSequence

RNG_SEED = 20261129


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good inputs to corrupt copies of: a checkpoint, a traverse, a bag of it, maps of it (formats 2 and 1)."""
    from vl2spike_ros.sources.bags import write_bag

    root = tmp_path_factory.mktemp("untrusted")
    checkpoint = write_tiny_checkpoint(root / "student.safetensors")
    images = write_traverse(root / "images", 20)  # evaluate needs 20 references (Recall@20)
    bag = write_bag(ImageFolderSequence(images), root / "bag")
    assert main(["build-map", "--images", str(images), "--checkpoint", str(checkpoint),
                 "--out", str(root / "map")]) == 0
    shutil.copytree(root / "map", root / "map_v1")
    as_format_1(root / "map_v1")
    return {"root": root, "checkpoint": checkpoint, "images": images, "bag": bag,
            "map": root / "map", "map_v1": root / "map_v1"}


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` with a hash of its bytes (folders as '<dir>', FIFOs and the like as '<special>')."""
    return {str(path.relative_to(folder)): ("<dir>" if path.is_dir() else "<special>" if not path.is_file()
                                            else hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(folder.rglob("*"))}


def error_line(stderr: str) -> str:
    """The one line of `stderr` besides progress bars (tqdm redraws them with carriage returns)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines()
             if not any(unit in line for unit in ("it/s]", "img/s]", "frame/s]"))]
    return one_error_line("\n".join(lines))


def refused(args: list, capsys, workspace: Path, expected: str = "") -> str:
    """Run the CLI in-process; it must refuse with exit 2 and one line, changing nothing under `workspace`."""
    before = snapshot(workspace)
    code = main([str(arg) for arg in args])
    line = error_line(capsys.readouterr().err)
    assert code == 2, line
    assert expected in line, line
    assert snapshot(workspace) == before
    return line


def refused_in_subprocess(args: list, workspace: Path, expected: str = "", preexec_fn=None,
                          wrapper: list[str] = ()) -> str:
    before = snapshot(workspace)
    result = subprocess.run([*wrapper, *VL2SPIKE, *map(str, args)], capture_output=True, text=True, timeout=300,
                            preexec_fn=preexec_fn, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    line = error_line(result.stderr)
    assert result.returncode == 2, result.stderr
    assert expected in line and "usage:" not in result.stderr, result.stderr
    assert snapshot(workspace) == before
    return line


def corrupted(data: bytes, how: str, rng: np.random.Generator) -> bytes:
    """Truncated at a random point, random bytes of the same length, or random bytes after a valid head."""
    if how == "truncated":
        return data[: int(rng.integers(1, max(2, len(data) - 1)))]
    if how == "random":
        return rng.bytes(len(data))
    return data[:16] + rng.bytes(max(0, len(data) - 16))  # "random tail": right magic, garbage after


HOWS = ("truncated", "random", "random tail")


# --- fuzz: images, bags, maps, checkpoints --------------------------------------------------------
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("victim", [0, 2])
def test_fuzzed_image_in_a_folder(inputs, tmp_path, capfd, how, victim):
    # capfd: what libpng writes to file descriptor 2 from C counts as a line too.
    rng = np.random.default_rng([RNG_SEED, victim, HOWS.index(how)])
    images = shutil.copytree(inputs["images"], tmp_path / "images")
    path = sorted(images.iterdir())[victim]
    path.write_bytes(corrupted(path.read_bytes(), how, rng))
    refused(["build-map", "--images", images, "--checkpoint", inputs["checkpoint"], "--out", tmp_path / "map"],
            capfd, tmp_path, path.name)


def with_image_data(png: bytes, change) -> bytes:
    """`png` with its (single) IDAT chunk's data replaced by change(data), the CRC made right again, so
    that only the image data is wrong."""
    length = int.from_bytes(png[33:37], "big")
    assert png[37:41] == b"IDAT" and png[45 + length:53 + length] == b"\0\0\0\0IEND", "one IDAT after IHDR"
    data = change(png[41:41 + length])
    return (png[:33] + len(data).to_bytes(4, "big") + b"IDAT" + data
            + zlib.crc32(b"IDAT" + data).to_bytes(4, "big") + png[45 + length:])


PNG_CORRUPTIONS = {
    "zeroed data": lambda png: png[:41] + bytes(len(png) - 53) + png[-12:],  # IDAT's CRC fails
    "zeroed data, CRC made right": lambda png: with_image_data(png, lambda data: bytes(len(data))),
    "zeroed deflate blocks": lambda png: with_image_data(png, lambda data: data[:2] + bytes(len(data) - 2)),
    "bad row filter": lambda png: with_image_data(png, lambda data: zlib.compress(
        b"\x07" + zlib.decompress(data)[1:])),
    "rows missing": lambda png: with_image_data(png, lambda data: zlib.compress(zlib.decompress(data)[:-200])),
    "no IEND": lambda png: png[:-12],
}


@pytest.mark.parametrize("how", PNG_CORRUPTIONS)
def test_corrupt_png_data_is_one_line_without_libpngs_own(inputs, tmp_path, capfd, how):
    """A PNG whose header is fine but whose image data is not: libpng, which OpenCV decodes with,
    writes its own "libpng error: ..." line to stderr from C; the file is refused before it sees it."""
    images = shutil.copytree(inputs["images"], tmp_path / "images")
    path = sorted(images.iterdir())[1]
    path.write_bytes(PNG_CORRUPTIONS[how](path.read_bytes()))
    refused(["build-map", "--images", images, "--checkpoint", inputs["checkpoint"], "--out", tmp_path / "map"],
            capfd, tmp_path, f"image file {path}: ")


def test_corrupt_png_data_is_one_line_from_the_real_command(inputs, tmp_path):
    images = shutil.copytree(inputs["images"], tmp_path / "images")
    path = sorted(images.iterdir())[1]
    path.write_bytes(PNG_CORRUPTIONS["zeroed deflate blocks"](path.read_bytes()))
    line = refused_in_subprocess(["build-map", "--images", images, "--checkpoint", inputs["checkpoint"],
                                  "--out", tmp_path / "map"], tmp_path)
    assert line.startswith(f"vl2spike build-map: error: image file {path}: cannot decode its PNG data: image data is "
                           "no valid zlib stream")


@pytest.mark.parametrize("name, how", [("db3", "truncated"), ("db3", "random"), ("db3", "random tail"),
                                       ("metadata.yaml", "truncated"), ("metadata.yaml", "random"),
                                       ("db3", "missing"), ("metadata.yaml", "missing")])
def test_fuzzed_bag(inputs, tmp_path, capsys, name, how):
    rng = np.random.default_rng([RNG_SEED, len(name), HOWS.index(how) if how in HOWS else 9])
    bag = shutil.copytree(inputs["bag"], tmp_path / "bag")
    path = next(bag.glob("*.db3")) if name == "db3" else bag / name
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(corrupted(path.read_bytes(), how, rng))
    # Without metadata.yaml the folder is no bag, but the refusal says what it looks like.
    expected = ("looks like a rosbag2 folder without metadata.yaml" if (name, how) == ("metadata.yaml", "missing")
                else "rosbag2")
    line = refused(["build-map", "--images", bag, "--checkpoint", inputs["checkpoint"], "--out", tmp_path / "map"],
                   capsys, tmp_path, expected)
    assert str(bag) in line and "no images in" not in line, line


@pytest.mark.parametrize("version", ["map", "map_v1"])
@pytest.mark.parametrize("name", ["index.faiss", "descriptors.npy", "places.json", "map.json"])
@pytest.mark.parametrize("how", ["truncated", "random tail"])
def test_fuzzed_map_file(inputs, tmp_path, capsys, version, name, how):
    rng = np.random.default_rng([RNG_SEED, len(name), len(version), HOWS.index(how)])
    map_dir = shutil.copytree(inputs[version], tmp_path / "map")
    path = map_dir / name
    path.write_bytes(corrupted(path.read_bytes(), how, rng))
    refused(["evaluate", "--map", map_dir, "--query", inputs["images"], "--checkpoint", inputs["checkpoint"],
             "--out", tmp_path / "eval"], capsys, tmp_path, "map ")


@pytest.mark.parametrize("how", HOWS)
def test_fuzzed_checkpoint(inputs, tmp_path, capsys, how):
    rng = np.random.default_rng([RNG_SEED, 7, HOWS.index(how)])
    checkpoint = tmp_path / "student.safetensors"
    checkpoint.write_bytes(corrupted(inputs["checkpoint"].read_bytes(), how, rng))
    refused(["build-map", "--images", inputs["images"], "--checkpoint", checkpoint, "--out", tmp_path / "map"],
            capsys, tmp_path, "checkpoint")


def test_fuzz_through_the_real_command(inputs, tmp_path):
    """The same refusals from the installed command: no traceback or usage block reaches stderr."""
    rng = np.random.default_rng(RNG_SEED)
    images = shutil.copytree(inputs["images"], tmp_path / "images")
    victim = sorted(images.iterdir())[1]
    victim.write_bytes(corrupted(victim.read_bytes(), "random tail", rng))
    refused_in_subprocess(["build-map", "--images", images, "--checkpoint", inputs["checkpoint"],
                           "--out", tmp_path / "map"], tmp_path, victim.name)
    map_dir = shutil.copytree(inputs["map_v1"], tmp_path / "map_v1")
    (map_dir / "index.faiss").write_bytes(corrupted((map_dir / "index.faiss").read_bytes(), "random tail", rng))
    refused_in_subprocess(["evaluate", "--map", map_dir, "--query", inputs["images"], "--checkpoint",
                           inputs["checkpoint"], "--out", tmp_path / "eval"], tmp_path, "index.faiss")
    refused_in_subprocess(["evaluate", "--sequence-length", "99999999999", "--map", map_dir, "--query", images,
                           "--out", tmp_path / "eval"], tmp_path, "--sequence-length: expected an integer in [1, 100]")


# --- the failures the issue lists, one by one -----------------------------------------------------
def test_image_size_bomb_in_a_folder(inputs, tmp_path, capsys):
    images = shutil.copytree(inputs["images"], tmp_path / "images")
    bomb = sorted(images.iterdir())[1].with_suffix(".jpg")
    sorted(images.iterdir())[1].unlink()
    bomb.write_bytes(jpeg_size_bomb())
    refused(["build-map", "--images", images, "--checkpoint", inputs["checkpoint"], "--out", tmp_path / "map"],
            capsys, tmp_path, "20000x20000 = 400000000 pixels")


def _bag_with_image(path: Path, height: int, width: int, step: int, data: bytes) -> Path:
    from rosbags.rosbag2 import Writer

    header = TYPESTORE.types["std_msgs/msg/Header"](
        stamp=TYPESTORE.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="camera")
    message = TYPESTORE.types[IMAGE](header=header, height=height, width=width, encoding="rgb8", is_bigendian=0,
                                     step=step, data=np.frombuffer(data, dtype=np.uint8))
    with Writer(path, version=9) as writer:
        connection = writer.add_connection("/camera/image_raw", IMAGE, typestore=TYPESTORE)
        writer.write(connection, 10**9, TYPESTORE.serialize_cdr(message, IMAGE))
    return path


@pytest.mark.parametrize("height, width, step, length, expected", [
    (32, 64, 192, 100, "image data truncated: 100 bytes, expected step*height = 6144"),
    (30000, 30000, 90000, 64, "image data truncated: 64 bytes, expected step*height = 2700000000"),
])
def test_bag_images_with_bad_sizes(inputs, tmp_path, capsys, height, width, step, length, expected):
    bag = _bag_with_image(tmp_path / "bag", height, width, step, bytes(length))
    refused(["build-map", "--images", bag, "--checkpoint", inputs["checkpoint"], "--out", tmp_path / "map"],
            capsys, tmp_path, expected)


def test_deeply_nested_places_json(inputs, tmp_path, capsys):
    map_dir = shutil.copytree(inputs["map_v1"], tmp_path / "map")
    (map_dir / "places.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(["evaluate", "--map", map_dir, "--query", inputs["images"], "--checkpoint", inputs["checkpoint"],
             "--out", tmp_path / "eval"], capsys, tmp_path, "places.json: JSON nested too deeply")


@pytest.mark.parametrize("args, expected", [
    (["evaluate", "--tolerance", "99999999999999999999999"], "--tolerance: expected an integer in [0, 10000000]"),
    (["evaluate", "--sequence-length", "99999999999"], "--sequence-length: expected an integer in [1, 100]"),
    (["evaluate", "--radius", "inf", "--query-poses", "poses.csv"], "--radius: expected a number in [0, 1e+07]"),
    (["build-map", "--images", "x", "--out", "y", "--batch-size", "10000000"], "--batch-size"),
    (["play", "bag", "--to", "bad topic!!"], "--to 'bad topic!!': not a valid ROS 2 topic name"),
    (["play", "bag", "--wait-subscribers", "-1"], "--wait-subscribers"),
    (["make-bag", "--images", "x", "--out", "y", "--rate", "nan"], "--rate"),
    (["init-checkpoint", "--out", "c.safetensors", "--set", "embed_dims=1000000"],
     "embed_dims must be an integer in [1, 4096], got 1000000"),
    (["init-checkpoint", "--out", "c.safetensors", "--set", "pooling=" + "[" * 100_000],
     "pooling must be one of"),
    (["build-map"], "the following arguments are required"),
    (["no-such-command"], "invalid choice"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    if args[0] == "evaluate":
        args = [*args, "--query", "q", "--map", "m", "--out", "o"]
    refused(args, capsys, tmp_path, expected)


def test_argument_error_has_no_usage_block_but_help_does(tmp_path):
    result = subprocess.run([*VL2SPIKE, "evaluate", "--tolerance", "lots"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "usage:" not in result.stderr
    assert "(see vl2spike evaluate --help)" in result.stderr
    assert "usage:" in subprocess.run([*VL2SPIKE, "evaluate", "--help"], capture_output=True, text=True).stdout


def test_checkpoint_config_beyond_limits_with_a_valid_fingerprint(inputs, tmp_path, capsys):
    """embed_dims 1e6 would ask for 1.1 TB; it is refused from the config, before any tensor exists."""
    state = {name: tensor.contiguous() for name, tensor in tiny_student().state_dict().items()}
    config = json.loads(tiny_student().config.to_json())
    config_json = json.dumps({**config, "embed_dims": 1_000_000}, sort_keys=True)
    metadata = {"format": CHECKPOINT_FORMAT, "format_version": str(CHECKPOINT_FORMAT_VERSION),
                "config": config_json, "provenance": "{}", "fingerprint": fingerprint_of(config_json, state)}
    save_file(state, str(tmp_path / "huge.safetensors"), metadata=metadata)
    refused(["build-map", "--images", inputs["images"], "--checkpoint", tmp_path / "huge.safetensors",
             "--out", tmp_path / "map"], capsys, tmp_path, "embed_dims must be an integer in [1, 4096]")


@pytest.mark.parametrize("where", ["folder", "missing parent"])
def test_init_checkpoint_out_at_a_folder_or_missing_parent(tmp_path, capsys, where):
    (tmp_path / "models").mkdir()
    out = tmp_path / "models" if where == "folder" else tmp_path / "nope" / "student.safetensors"
    expected = "is a folder" if where == "folder" else "its folder"
    refused(["init-checkpoint", "--out", out, "--overwrite"], capsys, tmp_path, expected)


def test_build_map_overwrite_replaces_only_a_map(inputs, tmp_path, capsys):
    """The folder merely holds a file called map.json (and a src/ folder): refused before encoding."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "map.json").write_text("{}\n")
    refused(["build-map", "--images", inputs["images"], "--checkpoint", inputs["checkpoint"], "--out", project,
             "--overwrite"], capsys, tmp_path, "not a map of vl2spike")
    # A map of ours is replaced.
    shutil.copytree(inputs["map"], tmp_path / "map")
    assert main(["build-map", "--images", str(inputs["images"]), "--checkpoint", str(inputs["checkpoint"]),
                 "--out", str(tmp_path / "map"), "--overwrite"]) == 0


def test_evaluate_out_refuses_a_foreign_folder(inputs, tmp_path, capsys):
    """Writing metrics into the query images' folder would break the next evaluation."""
    images = shutil.copytree(inputs["images"], tmp_path / "images")
    refused(["evaluate", "--map", inputs["map"], "--query", images, "--checkpoint", inputs["checkpoint"],
             "--out", images], capsys, tmp_path, "not an earlier evaluation output")
    out = tmp_path / "eval"
    args = ["evaluate", "--map", str(inputs["map"]), "--query", str(images), "--checkpoint",
            str(inputs["checkpoint"]), "--out", str(out)]
    assert main(args) == 0 and main(args) == 0  # an earlier evaluation's folder is written again
    capsys.readouterr()


def _limit_file_size() -> None:
    """In the child: files may not grow past 300 bytes, as on a full disk (EFBIG instead of ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))


@pytest.mark.parametrize("command", ["build-map", "make-bag", "evaluate"])
def test_full_disk_is_one_line(inputs, tmp_path, command):
    """One line naming the file, and nothing left behind (the snapshot): no half map, no empty folder."""
    images = shutil.copytree(inputs["images"], tmp_path / "images")
    if command == "evaluate":
        args = [command, "--map", inputs["map"], "--query", images, "--checkpoint", inputs["checkpoint"]]
    else:
        args = [command, "--images", images]
    if command == "build-map":
        args += ["--checkpoint", inputs["checkpoint"]]
    line = refused_in_subprocess([*args, "--out", tmp_path / "out"], tmp_path, preexec_fn=_limit_file_size)
    assert ("File too large" in line or "disk" in line) and str(tmp_path / "out") in line, line


def test_full_file_system_names_the_file_and_leaves_no_folder(inputs, tmp_path):
    """A real full file system: a tmpfs of 8 KiB in a private mount namespace. The listing of the
    tmpfs is taken inside the namespace, after the command, since only there can it be seen."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=8k tmpfs "$1"', "sh", str(disk)],
            capture_output=True, timeout=30).returncode != 0:
        pytest.skip("needs unshare with user and mount namespaces to mount a small tmpfs")
    in_full_disk = ['unshare', '-rm', 'sh', '-c', 'disk="$1"; shift; mount -t tmpfs -o size=8k tmpfs "$disk" && '
                    '"$@"; code=$?; echo "left:$(ls -A "$disk")"; exit $code', 'sh', str(disk)]
    out = disk / "eval"
    result = subprocess.run([*in_full_disk, *VL2SPIKE, "evaluate", "--map", str(inputs["map"]), "--query",
                             str(inputs["images"]), "--checkpoint", str(inputs["checkpoint"]), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    line = error_line(result.stderr)
    assert result.returncode == 2 and f"{out / 'pr_curve.png'}: No space left on device" in line, result.stderr
    assert result.stdout.splitlines()[-1] == "left:", result.stdout


def _read_only_mount_works(folder: Path) -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$1" "$1" && ! touch "$1/probe"',
                            "sh", str(folder)], capture_output=True, timeout=30)
    return probe.returncode == 0 and not (folder / "probe").exists()


@pytest.mark.parametrize("command", ["build-map", "evaluate", "make-bag", "init-checkpoint"])
def test_read_only_output_folder_is_one_line(inputs, tmp_path, command):
    """A real read-only file system (a read-only bind mount in a private mount namespace), which
    stops root too, unlike folder permissions."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if shutil.which("unshare") is None or not _read_only_mount_works(locked):
        pytest.skip("needs unshare with user and mount namespaces for a read-only mount")
    args = {"build-map": ["build-map", "--images", inputs["images"], "--checkpoint", inputs["checkpoint"]],
            "evaluate": ["evaluate", "--map", inputs["map"], "--query", inputs["images"],
                         "--checkpoint", inputs["checkpoint"]],
            "make-bag": ["make-bag", "--images", inputs["images"]],
            "init-checkpoint": ["init-checkpoint"]}[command]
    out = locked / ("student.safetensors" if command == "init-checkpoint" else "out")
    read_only = ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$1" "$1" && shift && exec "$@"', "sh", str(locked)]
    line = refused_in_subprocess([*args, "--out", out], tmp_path, "not writable", wrapper=read_only)
    assert str(locked) in line


# --- memory and blocking reads ----------------------------------------------------------------------
MiB = 1 << 20


# Runs the command as its only child and prints that child's peak resident set: forked straight from
# pytest, a child's peak would start at the test process's own size (its pages count until exec).
PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_of_command(args: list) -> tuple[int, str, int]:
    """(exit code, stderr, peak resident bytes) of the real command, measured by a small wrapper
    process whose only child it is."""
    with tempfile.TemporaryFile() as stderr:
        result = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *VL2SPIKE, *map(str, args)],
                                stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        stderr.seek(0)
        code, peak_kib = (int(value) for value in result.stdout.split()[-2:])
        return code, stderr.read().decode(errors="replace"), peak_kib * 1024


def pad_sparse(path: Path, size: int) -> None:
    """Grow `path` to `size` bytes of zeros without writing them (a sparse file)."""
    with open(path, "r+b") as stream:
        stream.truncate(size)


def test_padded_image_is_refused_before_it_is_read(inputs, tmp_path):
    """A 64x32 PNG followed by 1.5 GiB of zeros (a few KB on disk)."""
    images = shutil.copytree(inputs["images"], tmp_path / "images")
    victim = sorted(images.iterdir())[1]
    pad_sparse(victim, 1536 * MiB)
    # --backend torch: the peak measures reading the file, not an ONNX export on first use.
    code, stderr, peak = peak_rss_of_command(["build-map", "--images", images, "--checkpoint", inputs["checkpoint"],
                                              "--backend", "torch", "--out", tmp_path / "map"])
    line = error_line(stderr)
    assert code == 2 and f"{victim}: {1536 * MiB} bytes for a 64x32 PNG" in line, stderr
    assert peak < 1024 * MiB, f"peak {peak / MiB:.0f} MiB"


def test_large_images_cost_memory_of_one_image_not_of_a_batch(inputs, tmp_path):
    """16 zero-filled 4096x4096 PNGs (tiny on disk, 48 MiB each decoded) in one batch of 16: build-map
    needs a few decoded images more than for 64x32 ones, not 16."""
    ok, png = cv2.imencode(".png", np.zeros((4096, 4096), np.uint8))
    assert ok
    large = tmp_path / "large"
    large.mkdir()
    for index in range(16):
        (large / f"images-{index:05d}.png").write_bytes(png.tobytes())
    small = tmp_path / "small"
    small.mkdir()
    for index, path in enumerate(sorted(inputs["images"].iterdir())[:16]):
        shutil.copy(path, small / f"images-{index:05d}.png")
    peaks = {}
    for name, folder in (("small", small), ("large", large)):
        code, stderr, peaks[name] = peak_rss_of_command(
            ["build-map", "--images", folder, "--checkpoint", inputs["checkpoint"], "--out", tmp_path / f"map_{name}",
             "--batch-size", "16"])
        assert code == 0, stderr
    decoded = 4096 * 4096 * 3
    assert peaks["large"] - peaks["small"] < 5 * decoded, \
        f"large {peaks['large'] / MiB:.0f} MiB, small {peaks['small'] / MiB:.0f} MiB"


def test_padded_index_whose_size_map_json_records_is_refused_before_it_is_read(inputs, tmp_path):
    map_dir = shutil.copytree(inputs["map"], tmp_path / "map")
    pad_sparse(map_dir / "index.faiss", 1800 * MiB)
    metadata = json.loads((map_dir / "map.json").read_text())
    metadata["files"]["index.faiss"]["bytes"] = 1800 * MiB
    (map_dir / "map.json").write_text(json.dumps(metadata))
    code, stderr, peak = peak_rss_of_command(["evaluate", "--map", map_dir, "--query", inputs["images"],
                                              "--backend", "torch", "--checkpoint", inputs["checkpoint"],
                                              "--out", tmp_path / "eval"])
    line = error_line(stderr)
    assert code == 2 and f"index.faiss is {1800 * MiB} bytes, more than the" in line, stderr
    assert peak < 1024 * MiB, f"peak {peak / MiB:.0f} MiB"
    assert not (tmp_path / "eval").exists()


def test_padded_index_of_a_format_1_map_is_refused_before_it_is_read(inputs, tmp_path, capsys):
    map_dir = shutil.copytree(inputs["map_v1"], tmp_path / "map")
    pad_sparse(map_dir / "index.faiss", 512 * MiB)
    refused(["evaluate", "--map", map_dir, "--query", inputs["images"], "--checkpoint", inputs["checkpoint"],
             "--out", tmp_path / "eval"], capsys, tmp_path, f"index.faiss is {512 * MiB} bytes, more than the")


class Hung(Exception):
    """Raised by the deadline; not an OSError, which the CLI would report as a file error."""


@contextlib.contextmanager
def deadline(seconds: float):
    def interrupt(signum, frame):
        raise Hung(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", ["places.json", "map.json"])
def test_fifo_in_a_map_is_refused_not_waited_on(inputs, tmp_path, capsys, name):
    """The node's configure reads the map through the same PlaceMap.load as evaluate --map."""
    map_dir = shutil.copytree(inputs["map"], tmp_path / "map")
    (map_dir / name).unlink()
    os.mkfifo(map_dir / name)
    with deadline(30):
        refused(["evaluate", "--map", map_dir, "--query", inputs["images"], "--checkpoint", inputs["checkpoint"],
                 "--out", tmp_path / "eval"], capsys, tmp_path, f"{name} is not a regular file")


def test_fifo_as_metrics_of_an_evaluation_output_is_not_waited_on(inputs, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    os.mkfifo(out / "metrics.json")
    with deadline(30):
        refused(["evaluate", "--map", inputs["map"], "--query", inputs["images"], "--checkpoint", inputs["checkpoint"],
                 "--out", out], capsys, tmp_path, "not an earlier evaluation output")


def test_truncated_png_is_one_line_without_opencv_warnings(inputs, tmp_path, capfd):
    """OpenCV writes its warnings to file descriptor 2 itself, so capfd, not capsys, sees them."""
    images = shutil.copytree(inputs["images"], tmp_path / "images")
    victim = sorted(images.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    code = main(["build-map", "--images", str(images), "--checkpoint", str(inputs["checkpoint"]),
                 "--out", str(tmp_path / "map")])
    stderr = capfd.readouterr().err
    assert code == 2 and victim.name in error_line(stderr) and "WARN" not in stderr, stderr
