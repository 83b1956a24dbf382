"""Read, validate and write the on-disk layouts, one module each: `single_stream` (MS-TCN),
`referring` (HopaDIFF), `two_streams` (2s-DAS), `two_hands` (Polyphony) and `transcripts` (HAL),
with what they share (errors, in-memory videos, mapping / split / feature / label files, atomic
writes) in `base`. The layouts' public names are gathered here, so that `formats.read_referring`
reads the same wherever a layout is used; their helpers stay in their modules."""

from polyseg.data.formats.base import DataError  # noqa: F401
from polyseg.data.formats.base import Dataset  # noqa: F401
from polyseg.data.formats.base import MultiStreamDataset  # noqa: F401
from polyseg.data.formats.base import MultiStreamVideo  # noqa: F401
from polyseg.data.formats.base import PathLike  # noqa: F401
from polyseg.data.formats.base import Video  # noqa: F401
from polyseg.data.formats.base import align_lengths  # noqa: F401
from polyseg.data.formats.base import hold_out  # noqa: F401
from polyseg.data.formats.base import hold_out_split  # noqa: F401
from polyseg.data.formats.base import read_features  # noqa: F401
from polyseg.data.formats.base import read_labels  # noqa: F401
from polyseg.data.formats.base import read_mapping  # noqa: F401
from polyseg.data.formats.base import read_split  # noqa: F401
from polyseg.data.formats.base import reports_data_errors  # noqa: F401
from polyseg.data.formats.base import require_split  # noqa: F401
from polyseg.data.formats.base import segment_classes  # noqa: F401
from polyseg.data.formats.base import split_path  # noqa: F401
from polyseg.data.formats.base import write_atomic  # noqa: F401
from polyseg.data.formats.base import write_labels  # noqa: F401
from polyseg.data.formats.referring import REFERRING_PROTOCOLS  # noqa: F401
from polyseg.data.formats.referring import REFERRING_SUBSETS  # noqa: F401
from polyseg.data.formats.referring import ReferringDataset  # noqa: F401
from polyseg.data.formats.referring import ReferringSample  # noqa: F401
from polyseg.data.formats.referring import read_multilabels  # noqa: F401
from polyseg.data.formats.referring import read_references  # noqa: F401
from polyseg.data.formats.referring import read_referring  # noqa: F401
from polyseg.data.formats.referring import sample_name  # noqa: F401
from polyseg.data.formats.referring import split_referring  # noqa: F401
from polyseg.data.formats.referring import window_samples  # noqa: F401
from polyseg.data.formats.referring import write_referring  # noqa: F401
from polyseg.data.formats.single_stream import read_feature_folder  # noqa: F401
from polyseg.data.formats.single_stream import read_single_stream  # noqa: F401
from polyseg.data.formats.single_stream import write_single_stream  # noqa: F401
from polyseg.data.formats.transcripts import TranscriptVideo  # noqa: F401
from polyseg.data.formats.transcripts import read_transcript  # noqa: F401
from polyseg.data.formats.transcripts import read_transcripts  # noqa: F401
from polyseg.data.formats.two_hands import HAND_STREAMS  # noqa: F401
from polyseg.data.formats.two_hands import HANDS  # noqa: F401
from polyseg.data.formats.two_hands import read_hand_streams  # noqa: F401
from polyseg.data.formats.two_hands import read_two_hands  # noqa: F401
from polyseg.data.formats.two_hands import write_two_hands  # noqa: F401
from polyseg.data.formats.two_streams import STREAMS  # noqa: F401
from polyseg.data.formats.two_streams import read_two_streams  # noqa: F401
from polyseg.data.formats.two_streams import write_two_streams  # noqa: F401
