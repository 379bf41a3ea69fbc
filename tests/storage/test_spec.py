"""Spec validation, labels, dict round trip, and the format registry."""

from __future__ import annotations

import pytest

from prunewise.errors import PrunewiseError
from prunewise.storage import FORMAT_NAMES, FORMATS, Spec, get_format


@pytest.mark.parametrize(
    ("kwargs", "phrases"),
    [
        ({"format": "coo"}, ["unknown storage format 'coo'", "dense, csr, csc, bitmap, balanced"]),
        ({"values": "fp16"}, ["unknown value encoding 'fp16'", "fp32, int8, codebook"]),
        ({"format": "csr", "index_bits": 1}, ["index_bits=1 is outside 2..16", "4 and 8"]),
        ({"format": "csr", "index_bits": 17}, ["index_bits=17 is outside 2..16"]),
        ({"format": "csr", "index_bits": True}, ["index_bits=True"]),
        ({"format": "csr", "index_bits": 4.0}, ["index_bits=4.0"]),
        ({"values": "codebook", "codebook_bits": 0}, ["codebook_bits=0 is outside 1..8", "2^q"]),
        ({"values": "codebook", "codebook_bits": 9}, ["codebook_bits=9 is outside 1..8"]),
        ({"format": "balanced", "group": 1}, ["group=1", "from 2 to"]),
        ({"format": "balanced", "group": 16, "k": 17}, ["k=17", "from 0 to 16", "k=None"]),
        ({"format": "balanced", "k": -1}, ["k=-1"]),
        (
            {"format": "balanced", "axis": "diag"},
            ["unknown balanced group axis 'diag'", "in, out, flat"],
        ),
    ],
)
def test_invalid_specs_say_what_and_how(kwargs: dict, phrases: list[str]) -> None:
    with pytest.raises(PrunewiseError) as info:
        Spec(**kwargs)
    for phrase in phrases:
        assert phrase in str(info.value)


def test_valid_edges_are_accepted() -> None:
    assert Spec("csr", index_bits=2).index_bits == 2
    assert Spec("csc", index_bits=16).index_bits == 16
    assert Spec(values="codebook", codebook_bits=1).codebook_bits == 1
    assert Spec("balanced", group=2, k=0).k == 0
    assert Spec("balanced", group=2, k=2, axis="flat").axis == "flat"


def test_spec_is_frozen() -> None:
    spec = Spec("csr")
    with pytest.raises(AttributeError):
        spec.format = "csc"  # type: ignore[misc]


def test_labels() -> None:
    assert Spec("csr", index_bits=4, values="int8").label == "csr(b=4)+int8"
    assert Spec("balanced", group=16, k=4).label == "balanced(g=16,k=4,in)+fp32"
    assert Spec("balanced").label == "balanced(g=16,k=auto,in)+fp32"
    assert Spec("bitmap", values="codebook", codebook_bits=5).label == "bitmap+codebook(q=5)"


def test_dict_round_trip_and_unknown_fields() -> None:
    spec = Spec("balanced", values="codebook", codebook_bits=3, group=8, k=2, axis="out")
    assert Spec.from_dict(spec.to_dict()) == spec
    with pytest.raises(PrunewiseError, match="unknown storage spec field"):
        Spec.from_dict({"format": "csr", "bits": 4})
    with pytest.raises(PrunewiseError, match="must be a dict"):
        Spec.from_dict(["csr"])


def test_registry_matches_names_and_misses_name_the_known_ones() -> None:
    assert tuple(FORMATS) == FORMAT_NAMES
    assert get_format("csr").name == "csr"
    with pytest.raises(PrunewiseError, match="known formats: dense, csr, csc, bitmap, balanced"):
        get_format("coo")
