"""Long audio: windows cover the source, crossfades rebuild it exactly and keep the level, seams are reported."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from editing.cli import main
from editing.editor import Melodia
from editing.metrics.spectral import log_mel
from editing.windows import (crossfade, join_windows, overlaps, seam_flux_ratio, seam_positions,
                             window_spans)
from probing.errors import MelodiaError
from probing.synth import render_clip

WINDOW, OVERLAP, SR = 65536, 16384, 16000


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


@pytest.mark.parametrize("length", [WINDOW + 1, int(2.5 * WINDOW), 10 * WINDOW + 7])
def test_windows_cover_the_source_with_whole_overlaps(length):
    spans = window_spans(length, WINDOW, OVERLAP)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(0 < stop - start <= WINDOW for start, stop in spans)
    assert [stop - start for start, stop in overlaps(spans)] == [OVERLAP] * (len(spans) - 1)
    assert seam_positions(spans) == [start + OVERLAP // 2 for start, _ in spans[1:]]


def test_a_source_that_fits_one_window_is_one_span_without_seams():
    spans = window_spans(WINDOW, WINDOW, OVERLAP)
    assert spans == [(0, WINDOW)] and seam_positions(spans) == []
    assert seam_flux_ratio(np.ones(WINDOW, np.float32), SR, spans) is None


def test_crossfade_weights_sum_to_one_when_correlated_and_keep_power_when_not():
    fade_out, fade_in = crossfade(1000, correlation=1.0)
    np.testing.assert_allclose(fade_out + fade_in, 1.0, atol=1e-12)
    fade_out, fade_in = crossfade(1000, correlation=0.0)
    np.testing.assert_allclose(fade_out**2 + fade_in**2, 1.0, atol=1e-12)
    assert fade_out[0] > 0.99 and fade_in[-1] > 0.99 and np.all(np.diff(fade_in) > 0)


@pytest.mark.parametrize("wave", [np.full(int(2.5 * WINDOW), 0.3, np.float32),
                                  np.random.default_rng(0).normal(0, 0.2, 3 * WINDOW + 11).astype(np.float32)],
                         ids=["constant", "noise"])
def test_joining_the_unedited_windows_gives_the_source_back_exactly(wave):
    spans = window_spans(len(wave), WINDOW, OVERLAP)
    joined = join_windows([wave[a:b] for a, b in spans], spans)
    assert joined.shape == wave.shape
    np.testing.assert_allclose(joined, wave, atol=1e-6, rtol=0)


def test_joining_unrelated_windows_keeps_the_level_mid_seam():
    rng = np.random.default_rng(1)
    spans = window_spans(2 * WINDOW, WINDOW, OVERLAP)
    joined = join_windows([rng.normal(0, 0.2, b - a).astype(np.float32) for a, b in spans], spans)
    middle = seam_positions(spans)[0]
    assert rms(joined[middle - 2048: middle + 2048]) / rms(joined[:WINDOW // 2]) > 0.9  # a plain sum-to-1 fade: 0.71


def test_the_seam_report_flags_a_hard_splice():
    spans = window_spans(int(2.5 * WINDOW), WINDOW, OVERLAP)
    time = np.arange(spans[-1][1]) / SR
    noise = np.random.default_rng(2).normal(0, 1e-3, len(time))
    steady = (0.3 * np.sin(2 * np.pi * 440 * time) + noise).astype(np.float32)
    spliced = steady.copy()
    for position in seam_positions(spans):  # a burst of a square wave between two splices, inside each crossfade
        burst = slice(position, position + 4096)
        spliced[burst] = 0.3 * np.sign(np.sin(2 * np.pi * 97 * time[burst])) + noise[burst]
    assert 0.85 < seam_flux_ratio(steady, SR, spans) < 1.15
    assert seam_flux_ratio(spliced, SR, spans) > 1.3 * seam_flux_ratio(steady, SR, spans)


@pytest.fixture(scope="module")
def long_source() -> np.ndarray:
    return render_clip("piano", "waltz", "happy", 3, seconds=2.5 * WINDOW / SR)


@pytest.fixture(scope="module")
def near_identity(untrained_testbed, long_source):
    """A windowed DDIM edit to the empty prompt from a small t_start: close to the source everywhere."""
    return Melodia(untrained_testbed).edit(long_source, "", method="ddim", t_start=0.2, steps=5, guidance=1.0)


def test_a_source_two_and_a_half_windows_long_comes_back_exactly_as_long(near_identity, long_source):
    assert near_identity.audio.shape == long_source.shape and np.isfinite(near_identity.audio).all()
    assert near_identity.seams == [WINDOW - OVERLAP // 2, 2 * WINDOW - OVERLAP - OVERLAP // 2]
    summary = json.loads(json.dumps(near_identity.summary()))
    assert summary["seams"]["positions"] == near_identity.seams
    assert summary["seams"]["flux_ratio"] == pytest.approx(near_identity.seam_flux_ratio)
    assert summary["settings"]["windows"] is True


def test_a_near_identity_windowed_edit_stays_close_to_the_source_across_seams(near_identity, long_source):
    distance = np.abs(log_mel(near_identity.audio, SR) - log_mel(long_source, SR)).mean(axis=0)
    frame_samples = np.arange(len(distance)) * 256
    at_seams = np.zeros(len(distance), dtype=bool)
    for start, stop in overlaps(window_spans(len(long_source), WINDOW, OVERLAP)):
        at_seams |= (frame_samples >= start) & (frame_samples < stop)
    assert distance[~at_seams].mean() < 0.8  # the codec round trip (Griffin-Lim) alone is about 0.5
    assert distance[at_seams].mean() < 1.5 * distance[~at_seams].mean()
    assert 0.7 < near_identity.seam_flux_ratio / near_identity.source_seam_flux_ratio < 1.4


def test_a_too_long_source_with_windows_off_fails_in_one_line(untrained_testbed, long_source):
    with pytest.raises(MelodiaError, match=r"longer than the model's 4.10 s window.*--no-windows") as error:
        Melodia(untrained_testbed).edit(long_source, "violin", steps=4, windows=False)
    assert "\n" not in str(error.value)


def test_a_source_over_ten_minutes_is_refused(untrained_testbed):
    with pytest.raises(MelodiaError, match="longer than 600.0 s"):
        Melodia(untrained_testbed).edit(np.full(601 * SR, 0.1, np.float32), "violin", steps=4)


def test_the_cli_edits_long_audio_in_windows_unless_told_not_to(capsys, tmp_path, untrained_testbed_dir, long_source):
    source, out = tmp_path / "long.wav", tmp_path / "out.wav"
    sf.write(source, long_source, SR)
    common = [str(source), "--to", "violin", "--model", untrained_testbed_dir, "--steps", "3", "--method", "ddim"]
    assert main(["edit", *common, "-o", str(out), "--no-windows"]) == 2
    assert "--no-windows" in capsys.readouterr().err and not out.exists()
    assert main(["edit", *common, "-o", str(out)]) == 0
    assert "3 windows, seam flux ratio" in capsys.readouterr().out
    assert sf.info(out).frames == len(long_source)
    assert len(json.loads(out.with_suffix(".json").read_text())["seams"]["positions"]) == 2
