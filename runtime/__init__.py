"""The torch-free runtime: audio in, labels out, on any device with numpy and an inference backend.

    from dymn_edge.runtime import Tagger, load_bundle, embedded_bundle_path
    tagger = Tagger.from_bundle(load_bundle(embedded_bundle_path()))
    print(tagger.tag_file("clip.wav").tags)

Everything else in dymn-edge builds on this package; it never imports torch.
"""

from .audio import load_audio, resample
from .bundle import Bundle, is_bundle, load_bundle, write_bundle
from .errors import (
    AudioFormatError,
    BackendUnavailableError,
    BundleError,
    CheckpointError,
    ChecksumError,
    DownloadError,
    DymnEdgeError,
    UnknownModelError,
)
from .frontend import FrontendConfig, LogMel, log_mel
from .labels import LabelSet, audioset_labels
from .registry import available_models, embedded_bundle_path, get_card
from .tagging import Tag, Tagger, TagResult

__all__ = [
    "AudioFormatError",
    "BackendUnavailableError",
    "Bundle",
    "BundleError",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "DymnEdgeError",
    "FrontendConfig",
    "LabelSet",
    "LogMel",
    "Tag",
    "TagResult",
    "Tagger",
    "UnknownModelError",
    "audioset_labels",
    "available_models",
    "embedded_bundle_path",
    "get_card",
    "is_bundle",
    "load_audio",
    "load_bundle",
    "log_mel",
    "resample",
    "write_bundle",
]
