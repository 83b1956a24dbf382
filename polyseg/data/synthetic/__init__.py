"""Seeded synthetic datasets, one generator per module: `activities` (single stream, the embedded
default; with transcripts for HAL), `people` (referring, HopaDIFF), `assembly` (two hands,
Polyphony) and `motion` (two streams, 2s-DAS); `base` holds what they share. The names callers use
are gathered here (`synthetic.ensure_referring(...)`); the rest stays in its module."""

from polyseg.data.synthetic.activities import cache_name  # noqa: F401
from polyseg.data.synthetic.activities import class_names  # noqa: F401
from polyseg.data.synthetic.activities import confusable_pairs  # noqa: F401
from polyseg.data.synthetic.activities import ensure_single_stream  # noqa: F401
from polyseg.data.synthetic.activities import ensure_transcripts  # noqa: F401
from polyseg.data.synthetic.activities import make_single_stream  # noqa: F401
from polyseg.data.synthetic.activities import make_world  # noqa: F401
from polyseg.data.synthetic.activities import single_stream  # noqa: F401
from polyseg.data.synthetic.assembly import PARTS  # noqa: F401
from polyseg.data.synthetic.assembly import ensure_two_hands  # noqa: F401
from polyseg.data.synthetic.assembly import make_two_hands  # noqa: F401
from polyseg.data.synthetic.assembly import make_two_hands_world  # noqa: F401
from polyseg.data.synthetic.assembly import render_frames  # noqa: F401
from polyseg.data.synthetic.assembly import two_hands_cache_name  # noqa: F401
from polyseg.data.synthetic.motion import ensure_two_streams  # noqa: F401
from polyseg.data.synthetic.motion import make_two_streams  # noqa: F401
from polyseg.data.synthetic.motion import make_two_streams_world  # noqa: F401
from polyseg.data.synthetic.motion import two_streams  # noqa: F401
from polyseg.data.synthetic.motion import two_streams_cache_name  # noqa: F401
from polyseg.data.synthetic.people import REFERRING_CLASSES  # noqa: F401
from polyseg.data.synthetic.people import Person  # noqa: F401
from polyseg.data.synthetic.people import ensure_referring  # noqa: F401
from polyseg.data.synthetic.people import holistic_weights  # noqa: F401
from polyseg.data.synthetic.people import make_referring  # noqa: F401
from polyseg.data.synthetic.people import make_referring_world  # noqa: F401
from polyseg.data.synthetic.people import oscillations  # noqa: F401
from polyseg.data.synthetic.people import referring  # noqa: F401
from polyseg.data.synthetic.people import referring_cache_name  # noqa: F401
from polyseg.data.synthetic.people import sample_referring_video  # noqa: F401
