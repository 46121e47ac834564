"""Synthetic street scenes with exact ground truth (``curbwatch synth``).

A seeded script places actors on a street seen in perspective (cars passing, stopping and
parking at the kerb, two-wheelers on the pavement, a vendor's stall, a bin that overflows); the
renderer draws them with OpenCV primitives under changing light, with shadows and camera noise;
the ground truth lists every object's box per frame and every violation episode, and the zone
file matches the drawn geometry so the real edge can watch the video directly.

Modules: ``layout`` (street geometry, perspective, zones), ``script`` (actors and the seeded
scenario), ``sprites`` (drawing), ``render`` (background, light, noise, video), ``truth``
(ground truth and the annotated frame), ``generate`` (the whole job).
"""
