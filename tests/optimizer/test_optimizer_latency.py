"""Latency model: precedence (override > measured > same-region > model) and its error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedcloud.core.participants import Location, Participant
from optimizer import latency
from optimizer.catalog import load_catalog


def _p(region: str | None = None, lat: float | None = None, lon: float | None = None,
       rtt: dict[str, float] | None = None) -> Participant:
    return Participant(name="p", location=Location(region=region, lat=lat, lon=lon),
                       egress_cidr=None, data_dir=None, vms=(), rtt_ms=rtt or {})


@pytest.mark.parametrize(("a", "b", "km"), [
    ((0.0, 0.0), (0.0, 90.0), 10007.5),     # a quarter of the equator
    ((38.9, -77.4), (38.9, -77.4), 0.0),    # same point
    ((51.5, -0.1), (40.7, -74.0), 5570.0),  # London - New York
])
def test_haversine(a: tuple[float, float], b: tuple[float, float], km: float) -> None:
    assert float(latency.haversine_km(*a, *b)) == pytest.approx(km, rel=2e-3, abs=0.5)


def test_measured_pair_is_used_within_one_cloud() -> None:
    cat = load_catalog()
    # both directions exist in the AWS table: the mean is used
    expected = (cat.latency[("aws", "us-east-1", "eu-west-1")]
                + cat.latency[("aws", "eu-west-1", "us-east-1")]) / 2
    est = latency.estimate(_p("aws:us-east-1"), "aws", "eu-west-1")
    assert est.source == latency.SOURCE_MEASURED
    assert est.ms == pytest.approx(expected)


def test_cross_cloud_pair_uses_the_model() -> None:
    # aws:us-east-1 and gcp:us-east4 are both in Northern Virginia: no measurement, short RTT
    est = latency.estimate(_p("aws:us-east-1"), "gcp", "us-east4")
    assert est.source == latency.SOURCE_MODEL
    assert 1.0 <= est.ms < 40.0


def test_override_wins_over_measurement() -> None:
    est = latency.estimate(_p("aws:us-east-1", rtt={"aws:eu-west-1": 5.0}), "aws", "eu-west-1")
    assert (est.ms, est.source) == (5.0, latency.SOURCE_OVERRIDE)


def test_same_region_without_measured_diagonal() -> None:
    est = latency.estimate(_p("azure:koreacentral"), "azure", "koreacentral")
    assert est.source == latency.SOURCE_SAME_REGION
    assert est.ms == latency.intra_region_rtt_ms()


def test_lat_lon_location_and_distance_ordering() -> None:
    seoul = _p(lat=37.57, lon=126.98)
    near = latency.rtt_ms(seoul, "aws", "ap-northeast-2")
    far = latency.rtt_ms(seoul, "aws", "eu-west-1")
    assert near < 40 < 150 < far
    assert isinstance(near, float)


def test_rtt_matrix_shape_and_sources() -> None:
    m, src = latency.rtt_matrix([_p("aws:us-east-1"), _p(lat=45.46, lon=9.19)],
                                [("aws", "us-east-1"), ("gcp", "europe-west8")])
    assert m.shape == (2, 2)
    assert src[0][0] == latency.SOURCE_MEASURED
    assert src[1] == [latency.SOURCE_MODEL, latency.SOURCE_MODEL]
    assert np.all(m > 0)


def test_model_beats_plain_linear_on_held_out_pairs() -> None:
    err = latency.model_error()
    assert err.cv_median_ms < err.linear_cv_median_ms
    assert err.cv_p90_ms < err.linear_cv_p90_ms
    assert err.pairs > 500


def test_readme_quotes_the_measured_model_error() -> None:
    text = (Path(__file__).resolve().parents[2] / "optimizer" / "README.md").read_text()
    err = latency.model_error().to_dict()
    for key in ("cv_median_ms", "cv_p90_ms", "loro_median_ms", "loro_p90_ms",
                "linear_cv_median_ms", "linear_cv_p90_ms"):
        assert re.search(rf"`{key}` *\| *{err[key]}\b", text), key
