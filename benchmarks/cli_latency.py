"""How fast the CLI answers: every --help, and every bad input of the first-hour table, as a user types them.

    python benchmarks/cli_latency.py            # one table: case, exit code, seconds, the one line on stderr

Each case is a fresh `melodia` process (import time included), timed by wall clock in this run; the
fastest of --repeats is printed. A ratio to `python -c pass` (the interpreter's own start-up) is
printed beside each, so the numbers mean something on a busy machine too. Nothing is written: the
bad-input cases must exit 2 before any output exists (checked).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

COMMANDS = ("demo", "synth", "generate", "layers", "capture", "probe", "edit", "eval", "bench")


def bad_inputs(folder: Path) -> list[tuple[str, list[str]]]:
    """(case, melodia arguments) for each bad input a new user hits first."""
    rng = np.random.default_rng(0)
    (folder / "bad.wav").write_text("not audio")
    sf.write(folder / "silent.wav", np.zeros(16000, np.float32), 16000)
    nan = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    nan[5] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(folder / "long.wav", (rng.standard_normal(16000 * 601) * 0.1).astype(np.float32), 16000)
    sf.write(folder / "ok.wav", (rng.standard_normal(32000) * 0.1).astype(np.float32), 16000)
    out = str(folder / "out.wav")
    edit = ["edit", str(folder / "ok.wav"), "--to", "violin", "-o", out]
    return [("not audio", ["edit", str(folder / "bad.wav"), "--to", "violin", "-o", out]),
            ("missing file", ["edit", str(folder / "missing.wav"), "--to", "violin", "-o", out]),
            ("silent", ["edit", str(folder / "silent.wav"), "--to", "violin", "-o", out]),
            ("NaN samples", ["edit", str(folder / "nan.wav"), "--to", "violin", "-o", out]),
            ("too long", ["edit", str(folder / "long.wav"), "--to", "violin", "-o", out]),
            ("output under a file", ["edit", str(folder / "ok.wav"), "--to", "violin", "-o",
                                     str(folder / "ok.wav" / "out.wav")]),
            ("output not .wav", ["edit", str(folder / "ok.wav"), "--to", "violin", "-o", str(folder / "out.mp3")]),
            ("model typo", [*edit, "--model", "testbd"]),
            ("model folder missing", [*edit, "--model", "./no/such/folder"]),
            ("hub id, offline", [*edit, "--model", "someone/no-such-model"]),
            ("profile missing", [*edit, "--profile", str(folder / "nope.json")]),
            ("layers: model typo", ["layers", "testbd"]),
            ("probe: unknown split", ["probe", str(folder / "s.zarr"), "-o", str(folder / "p.json"), "--split", "x"]),
            ("capture: prompts missing", ["capture", "--prompts", "nope.yaml", "--store", str(folder / "x.zarr")])]


def timed(argv: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, done.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    melodia = [sys.executable, "-m", "editing.cli"]
    interpreter = min(timed([sys.executable, "-c", "pass"])[0] for _ in range(args.repeats))
    print(f"python start-up alone: {interpreter:.3f} s\n")
    print(f"{'case':34} {'rc':>3} {'seconds':>8} {'x python':>9}  stderr")
    cases = [("--help", ["--help"])] + [(f"{c} --help", [c, "--help"]) for c in COMMANDS]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases += bad_inputs(folder)
        for case, argv in cases:
            runs = [timed(melodia + argv) for _ in range(args.repeats)]
            seconds, rc, err = min(runs)
            lines = err.splitlines()
            shown = lines[-1] if lines else ""
            assert not (folder / "out.wav").exists() and not (folder / "p.json").exists(), case
            flag = "" if "--help" in case or (rc == 2 and len(lines) == 1) else "  <- not one line / exit 2"
            print(f"{case:34} {rc:>3} {seconds:8.2f} {seconds / interpreter:9.1f}  {shown[:110]}{flag}")


if __name__ == "__main__":
    main()
