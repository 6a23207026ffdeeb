"""Edit metrics: one module per metric, each naming the reference it follows (docs/metrics.md).

| module | metrics | needs |
|---|---|---|
| spectral | chroma_similarity (paper's Chroma), log_mel_distance | nothing |
| melody | melody_accuracy, contour_accuracy, pitch_contour (pYIN f0; mir_eval raw pitch / raw chroma accuracy) | nothing |
| clap | clap_score, load_clap (text adherence, paper's CLAP) | a CLAP checkpoint |
| lpaps | lpaps_distance, load_lpaps (structure, paper's LPAPS) | SpecVQGAN LPAPS weights |
| fad | frechet_distance, frechet_audio_distance (paper's FAD) | embeddings (default CLAP) |
| balance | adherence_structure_balance (ASB), adherence_musicality_balance (AMB) | per-method scores |
| testbed | classifier_adherence, ideal_edit_distance | the synthesizer's ground truth |
| suite | score_edit: all per-edit metrics (`melodia eval`) | whatever is here |

Examples:
    >>> chroma_similarity(source, edited, 16000)                          # melody kept? 1 = same pitch classes
    >>> clap_score(edited, 16000, "violin", checkpoint="clap-folder/")    # text adherence, in [-1, 1]
    >>> adherence_structure_balance(clap=[0.34, 0.42], lpaps=[4.39, 3.49])   # per method, in [0, 1]
"""
from editing.metrics._common import MetricUnavailableError, MissingWeightsError
from editing.metrics.balance import adherence_musicality_balance, adherence_structure_balance
from editing.metrics.clap import DEFAULT_CLAP, ClapEmbedder, clap_score, load_clap
from editing.metrics.fad import frechet_audio_distance, frechet_distance
from editing.metrics.lpaps import LPAPSNet, load_lpaps, lpaps_distance
from editing.metrics.melody import MelodyAccuracy, contour_accuracy, melody_accuracy, pitch_contour
from editing.metrics.spectral import chroma_similarity, log_mel_distance
from editing.metrics.suite import score_edit
from editing.metrics.testbed import ClassifierAdherence, classifier_adherence, ideal_edit_distance, prompt_targets

__all__ = [
    "DEFAULT_CLAP",
    "ClapEmbedder",
    "ClassifierAdherence",
    "LPAPSNet",
    "MelodyAccuracy",
    "MetricUnavailableError",
    "MissingWeightsError",
    "adherence_musicality_balance",
    "adherence_structure_balance",
    "chroma_similarity",
    "clap_score",
    "contour_accuracy",
    "classifier_adherence",
    "frechet_audio_distance",
    "frechet_distance",
    "ideal_edit_distance",
    "load_clap",
    "load_lpaps",
    "log_mel_distance",
    "lpaps_distance",
    "melody_accuracy",
    "pitch_contour",
    "prompt_targets",
    "score_edit",
]
