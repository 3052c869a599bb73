"""Round-trip time from a participant to a candidate aggregator region.

In order: the stack's own measurement, a measured value from ``catalog/latency.csv`` (same cloud),
else a distance model fitted on the measured pairs; :func:`model_error` reports its held-out
error. See optimizer/README.md, "Latency model".
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcloud.core.participants import Location, Participant
from optimizer.catalog import Catalog, load_catalog

EARTH_RADIUS_KM = 6371.0
# Ridge penalty on the zone-pair offsets (ms^2 per unit); chosen by 5-fold cross-validation
# (0.1 to 10 give the same held-out error within 0.5 ms; 100 is visibly worse).
ZONE_RIDGE = 1.0
CV_FOLDS = 5
MIN_MODEL_RTT_MS = 1.0

SOURCE_OVERRIDE = "override"
SOURCE_MEASURED = "measured"
SOURCE_SAME_REGION = "same-region"
SOURCE_MODEL = "model"


@dataclass(frozen=True)
class Point:
    """A located participant or region: coordinates, routing zone, and region if any."""

    lat: float
    lon: float
    zone: str
    cloud: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class RttEstimate:
    """One RTT and where it came from (override, measured, same-region or model)."""

    ms: float
    source: str


@dataclass(frozen=True)
class DistanceModel:
    """The fitted distance model (see the module docstring)."""

    intercept_ms: float
    ms_per_1000km: float
    zone_offsets_ms: dict[tuple[str, str], float]
    n_rows: int

    def predict(self, distance_km: np.ndarray, zone_pairs: Sequence[tuple[str, str]]
                ) -> np.ndarray:
        """Return the modelled RTT in ms for each distance and (sorted) zone pair."""
        offsets = np.array([self.zone_offsets_ms.get(z, 0.0) for z in zone_pairs])
        rtt = self.intercept_ms + self.ms_per_1000km * np.asarray(distance_km) / 1000 + offsets
        return np.maximum(rtt, MIN_MODEL_RTT_MS)


@dataclass(frozen=True)
class ModelError:
    """Absolute error (ms) of the distance model on measured pairs held out of the fit."""

    pairs: int
    rows: int
    cv_median_ms: float
    cv_p90_ms: float
    loro_median_ms: float
    loro_p90_ms: float
    linear_cv_median_ms: float
    linear_cv_p90_ms: float

    def to_dict(self) -> dict[str, float | int]:
        """Return a JSON-ready dict."""
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in vars(self).items()}


def haversine_km(lat1: np.ndarray | float, lon1: np.ndarray | float,
                 lat2: np.ndarray | float, lon2: np.ndarray | float) -> np.ndarray:
    """Great-circle distance in km (vectorised over numpy arrays)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def zone_of(lat: float, lon: float, continent: str) -> str:
    """Return the routing zone of a point: its continent, with Asia and North America split.

    Asia spans routes that differ a lot (the Gulf reaches Europe directly, East Asia does not),
    so it is split by longitude/latitude; North America is split east/west of 100 W.
    """
    if continent == "Asia":
        if lon < 60:
            return "Middle East"
        if lon < 100:
            return "South Asia"
        return "Southeast Asia" if lat < 15 else "East Asia"
    if continent == "North America":
        return "North America East" if lon > -100 else "North America West"
    return continent


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def region_point(cat: Catalog, cloud: str, region: str) -> Point:
    """Return the located point of a catalogue region."""
    r = cat.regions[(cloud, region)]
    return Point(r.latitude_deg, r.longitude_deg, zone_of(r.latitude_deg, r.longitude_deg,
                                                          r.continent), cloud, region)


def locate(location: Location, cat: Catalog | None = None) -> Point:
    """Return where a participant is.

    A region location uses that region's coordinates. A latitude/longitude location takes the
    continent of the nearest catalogue region (to pick its routing zone).
    """
    cat = cat or load_catalog()
    if location.region is not None:
        cloud, region = location.region.split(":", 1)
        return region_point(cat, cloud, region)
    assert location.lat is not None and location.lon is not None
    regs = list(cat.regions.values())
    d = haversine_km(location.lat, location.lon, np.array([r.latitude_deg for r in regs]),
                     np.array([r.longitude_deg for r in regs]))
    continent = regs[int(np.argmin(d))].continent
    return Point(location.lat, location.lon, zone_of(location.lat, location.lon, continent))


@dataclass(frozen=True)
class _Rows:
    """Measured inter-region rows usable for calibration (both regions have coordinates)."""

    distance_km: np.ndarray
    rtt_ms: np.ndarray
    zone_pairs: tuple[tuple[str, str], ...]
    pair_keys: tuple[str, ...]
    regions: tuple[tuple[str, str], ...]  # the two region keys "<cloud>:<region>" of each row


def _measured_rows(cat: Catalog) -> _Rows:
    dist, rtt, zones, keys, regs = [], [], [], [], []
    for (cloud, a, b), ms in sorted(cat.latency.items()):
        if a == b or (cloud, a) not in cat.regions or (cloud, b) not in cat.regions:
            continue
        pa, pb = region_point(cat, cloud, a), region_point(cat, cloud, b)
        dist.append(float(haversine_km(pa.lat, pa.lon, pb.lat, pb.lon)))
        rtt.append(ms)
        zones.append(_pair(pa.zone, pb.zone))
        lo, hi = sorted((a, b))
        keys.append(f"{cloud}:{lo}|{hi}")
        regs.append((f"{cloud}:{a}", f"{cloud}:{b}"))
    return _Rows(np.array(dist), np.array(rtt), tuple(zones), tuple(keys), tuple(regs))


def _design(rows: _Rows, zone_index: dict[tuple[str, str], int] | None) -> np.ndarray:
    cols = [np.ones(len(rows.rtt_ms)), rows.distance_km / 1000]
    x = np.column_stack(cols)
    if zone_index is None:
        return x
    z = np.zeros((len(rows.rtt_ms), len(zone_index)))
    for i, zp in enumerate(rows.zone_pairs):
        if zp in zone_index:  # a zone pair unseen in training gets no offset
            z[i, zone_index[zp]] = 1.0
    return np.hstack([x, z])


def _fit(rows: _Rows, mask: np.ndarray, with_zones: bool = True) -> DistanceModel:
    zone_index: dict[tuple[str, str], int] | None = None
    if with_zones:
        seen = sorted({rows.zone_pairs[i] for i in np.flatnonzero(mask)})
        zone_index = {z: i for i, z in enumerate(seen)}
    x = _design(rows, zone_index)[mask]
    y = rows.rtt_ms[mask]
    penalty = np.zeros(x.shape[1])
    penalty[2:] = ZONE_RIDGE
    coef = np.linalg.solve(x.T @ x + np.diag(penalty), x.T @ y)
    offsets = {z: float(coef[2 + i]) for z, i in (zone_index or {}).items()}
    return DistanceModel(float(coef[0]), float(coef[1]), offsets, int(mask.sum()))


@functools.lru_cache(maxsize=4)
def calibrate(cat: Catalog | None = None) -> DistanceModel:
    """Return the distance model fitted on every usable measured pair of the catalogue."""
    cat = cat or load_catalog()
    rows = _measured_rows(cat)
    return _fit(rows, np.ones(len(rows.rtt_ms), dtype=bool))


@functools.lru_cache(maxsize=4)
def model_error(cat: Catalog | None = None) -> ModelError:
    """Return the distance model's absolute error on measured pairs held out of the fit.

    Two splits: 5-fold cross-validation by unordered region pair (both directions of a pair are
    held out together; folds by CRC32 of the pair, so deterministic), and leave-one-region-out
    (every pair touching a region is held out while fitting; closer to a participant in a new
    place). The plain linear model without zone offsets is reported for comparison.
    """
    cat = cat or load_catalog()
    rows = _measured_rows(cat)
    fold = np.array([zlib.crc32(k.encode()) % CV_FOLDS for k in rows.pair_keys])
    cv = np.empty(len(rows.rtt_ms))
    cv_lin = np.empty(len(rows.rtt_ms))
    for k in range(CV_FOLDS):
        train, test = fold != k, fold == k
        for with_zones, out in ((True, cv), (False, cv_lin)):
            m = _fit(rows, train, with_zones)
            out[test] = m.predict(rows.distance_km[test],
                                  [rows.zone_pairs[i] for i in np.flatnonzero(test)])
    loro: list[float] = []
    for key in sorted({r for pair in rows.regions for r in pair}):
        test = np.array([key in pair for pair in rows.regions])
        m = _fit(rows, ~test)
        pred = m.predict(rows.distance_km[test], [rows.zone_pairs[i] for i in np.flatnonzero(test)])
        loro.extend(np.abs(pred - rows.rtt_ms[test]).tolist())
    e_cv = np.abs(cv - rows.rtt_ms)
    e_lin = np.abs(cv_lin - rows.rtt_ms)
    e_loro = np.array(loro)
    return ModelError(
        pairs=len(set(rows.pair_keys)), rows=len(rows.rtt_ms),
        cv_median_ms=float(np.median(e_cv)), cv_p90_ms=float(np.percentile(e_cv, 90)),
        loro_median_ms=float(np.median(e_loro)), loro_p90_ms=float(np.percentile(e_loro, 90)),
        linear_cv_median_ms=float(np.median(e_lin)),
        linear_cv_p90_ms=float(np.percentile(e_lin, 90)),
    )


@functools.lru_cache(maxsize=4)
def intra_region_rtt_ms(cat: Catalog | None = None) -> float:
    """RTT inside one region where no diagonal is measured: the median measured diagonal."""
    cat = cat or load_catalog()
    diag = [ms for (_, a, b), ms in cat.latency.items() if a == b]
    return float(np.median(diag)) if diag else MIN_MODEL_RTT_MS


def measured_rtt_ms(cloud: str, a: str, b: str, cat: Catalog | None = None) -> float | None:
    """Return the measured RTT between two regions of one cloud (mean of both directions)."""
    cat = cat or load_catalog()
    vals = [v for v in (cat.latency.get((cloud, a, b)), cat.latency.get((cloud, b, a)))
            if v is not None]
    return float(sum(vals) / len(vals)) if vals else None


def rtt_matrix(participants: Sequence[Participant], candidates: Sequence[tuple[str, str]],
               cat: Catalog | None = None) -> tuple[np.ndarray, list[list[str]]]:
    """Return RTT (ms) from each participant (rows) to each candidate region (columns).

    Args:
        participants: The federation's members (their location and any ``rttMs`` overrides).
        candidates: ``(cloud, region)`` pairs, each in the catalogue's ``regions.csv``.
        cat: The catalogue (default: the project's).

    Returns:
        The ``[len(participants), len(candidates)]`` matrix and the source of every cell.
    """
    cat = cat or load_catalog()
    model = calibrate(cat)
    intra = intra_region_rtt_ms(cat)
    cpts = [region_point(cat, c, r) for c, r in candidates]
    clat = np.array([p.lat for p in cpts])
    clon = np.array([p.lon for p in cpts])
    out = np.empty((len(participants), len(candidates)))
    sources: list[list[str]] = []
    for i, part in enumerate(participants):
        pt = locate(part.location, cat)
        d = haversine_km(pt.lat, pt.lon, clat, clon)
        out[i] = model.predict(d, [_pair(pt.zone, c.zone) for c in cpts])
        src = [SOURCE_MODEL] * len(candidates)
        for j, (cloud, region) in enumerate(candidates):
            key = f"{cloud}:{region}"
            if key in part.rtt_ms:
                out[i, j], src[j] = part.rtt_ms[key], SOURCE_OVERRIDE
            elif pt.cloud == cloud and pt.region is not None:
                measured = measured_rtt_ms(cloud, pt.region, region, cat)
                if measured is not None:
                    out[i, j], src[j] = measured, SOURCE_MEASURED
                elif pt.region == region:
                    out[i, j], src[j] = intra, SOURCE_SAME_REGION
        sources.append(src)
    return out, sources


def estimate(participant: Participant, cloud: str, region: str,
             cat: Catalog | None = None) -> RttEstimate:
    """Return the RTT from one participant to one region, with its source."""
    m, s = rtt_matrix([participant], [(cloud, region)], cat)
    return RttEstimate(ms=float(m[0, 0]), source=s[0][0])


def rtt_ms(participant: Participant, cloud: str, region: str) -> float:
    """Return the RTT in ms from ``participant`` to ``cloud:region`` (overrides win)."""
    return estimate(participant, cloud, region).ms


def great_circle_km(a: Location, cloud: str, region: str) -> float:
    """Return the great-circle distance in km from a location to a catalogue region."""
    cat = load_catalog()
    pa = locate(a, cat)
    pb = region_point(cat, cloud, region)
    return float(haversine_km(pa.lat, pa.lon, pb.lat, pb.lon))

