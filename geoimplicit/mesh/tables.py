"""The marching-cubes case table, built from first principles (no copied table).

Corner ``c`` of a cell sits at offset ``(c & 1, c >> 1 & 1, c >> 2 & 1)`` (x, y, z); a case is the 8-bit mask
of the corners that are inside. On each cell face the crossings of the inside/outside boundary are joined by
segments; where a face is ambiguous (two diagonal corners inside, two outside) the inside corners are kept
apart. The rule depends only on the face's own corners, so two cells sharing a face draw the same segments
there and the surface has no cracks. Each cell's segments close into loops, each loop is fanned into
triangles, oriented so that their normals point from inside to outside.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

CORNERS = np.array([(c & 1, (c >> 1) & 1, (c >> 2) & 1) for c in range(8)], np.int64)
# the 12 edges as (corner a, corner b) with b = a + 2**axis; EDGE_AXIS is that axis
EDGES = np.array([(a, a | (1 << ax)) for ax in range(3) for a in range(8) if not a & (1 << ax)], np.int64)
EDGE_AXIS = np.array([ax for ax in range(3) for a in range(8) if not a & (1 << ax)], np.int64)
EDGE_ORIGIN = CORNERS[EDGES[:, 0]]  # (12, 3): the edge's lower corner offset within the cell


def _faces():
    """The 6 faces: (outward normal, corners in cyclic order)."""
    faces = []
    for ax in range(3):
        u, v = [a for a in range(3) if a != ax]
        for side in (0, 1):
            base = side << ax
            ring = [base, base | (1 << u), base | (1 << u) | (1 << v), base | (1 << v)]
            normal = np.zeros(3)
            normal[ax] = 1.0 if side else -1.0
            faces.append((normal, ring))
    return faces


def _edge_index(a: int, b: int) -> int:
    a, b = min(a, b), max(a, b)
    return int(np.flatnonzero((EDGES[:, 0] == a) & (EDGES[:, 1] == b))[0])


def _face_segments(case: int, normal, ring) -> list:
    """Oriented segments (edge_from, edge_to) on one face."""
    inside = [(case >> c) & 1 for c in ring]
    crossings = [k for k in range(4) if inside[k] != inside[(k + 1) % 4]]
    if not crossings:
        return []
    if len(crossings) == 2:
        groups = [[ring[k] for k in range(4) if inside[k]]]
        pairs = [tuple(crossings)]
    else:  # ambiguous: cut off each inside corner on its own
        pairs, groups = [], []
        for k in range(4):
            if inside[k]:
                pairs.append(((k - 1) % 4, k))  # the two face edges at corner k
                groups.append([ring[k]])
    segments = []
    for (ka, kb), group in zip(pairs, groups):
        ea = _edge_index(ring[ka], ring[(ka + 1) % 4])
        eb = _edge_index(ring[kb], ring[(kb + 1) % 4])
        pa = CORNERS[EDGES[ea]].mean(0)  # edge midpoints stand in for the crossings
        pb = CORNERS[EDGES[eb]].mean(0)
        centre = CORNERS[group].mean(0)
        if np.dot(np.cross(pb - pa, normal), centre - pa) < 0:
            ea, eb = eb, ea
        segments.append((ea, eb))
    return segments


@lru_cache(maxsize=1)
def triangle_table() -> np.ndarray:
    """(256, T, 3) int64 edge indices of each case's triangles, -1 padded (T = the most any case needs)."""
    cases = []
    for case in range(256):
        nxt = {}
        for normal, ring in _faces():
            for a, b in _face_segments(case, normal, ring):
                assert a not in nxt, (case, a)
                nxt[a] = b
        tris = []
        while nxt:
            start = min(nxt)
            loop = [start]
            while nxt[loop[-1]] != start:
                loop.append(nxt.pop(loop[-1]))
            nxt.pop(loop[-1])
            tris += [(loop[0], loop[i], loop[i + 1]) for i in range(1, len(loop) - 1)]
        cases.append(tris)
    width = max(len(t) for t in cases)
    table = np.full((256, width, 3), -1, np.int64)
    for case, tris in enumerate(cases):
        if tris:
            table[case, : len(tris)] = tris
    return table
