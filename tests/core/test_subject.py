"""Subject identifiers: GB 11643 resident IDs and GB 32100 unified social credit codes."""

from __future__ import annotations

import datetime as dt
from typing import TypeAlias

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.events import SubjectId
from exchange.errors import ExchangeError
from exchange.subject import make_resident_id, make_uscc, validate_subject
from exchange.v1 import common_pb2

Kind: TypeAlias = common_pb2.SubjectKind.ValueType
RESIDENT = common_pb2.RESIDENT_ID
USCC = common_pb2.UNIFIED_SOCIAL_CREDIT_CODE
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
CHINA = dt.timezone(dt.timedelta(hours=8))


def refusal(kind: Kind, identifier: str) -> str:
    with pytest.raises(ExchangeError) as refused:
        validate_subject(common_pb2.Subject(kind=kind, id=identifier))
    assert refused.value.status == grpc.StatusCode.INVALID_ARGUMENT
    return refused.value.message


@pytest.mark.parametrize(
    ("kind", "identifier", "kind_name"),
    [
        (RESIDENT, "11010519491231002X", "RESIDENT_ID"),  # the example in GB 11643-1999
        (USCC, "91350100M000100Y43", "UNIFIED_SOCIAL_CREDIT_CODE"),  # published codes
        (USCC, "911100007109288314", "UNIFIED_SOCIAL_CREDIT_CODE"),
        (USCC, "91110000802100433B", "UNIFIED_SOCIAL_CREDIT_CODE"),
        (USCC, "914403001922038216", "UNIFIED_SOCIAL_CREDIT_CODE"),
    ],
)
def test_published_identifiers_are_valid(kind: Kind, identifier: str, kind_name: str) -> None:
    subject = validate_subject(common_pb2.Subject(kind=kind, id=identifier))
    assert subject == SubjectId(kind_name, identifier)


def test_lower_case_is_normalised_to_upper_case() -> None:
    resident = validate_subject(common_pb2.Subject(kind=RESIDENT, id="11010519491231002x"))
    company = validate_subject(common_pb2.Subject(kind=USCC, id="91350100m000100y43"))
    assert resident.id == "11010519491231002X"
    assert company.id == "91350100M000100Y43"


@pytest.mark.parametrize(
    ("kind", "identifier", "message"),
    [
        (
            0,
            "11010519491231002X",
            "subject.kind: must be RESIDENT_ID or UNIFIED_SOCIAL_CREDIT_CODE",
        ),
        (
            7,
            "11010519491231002X",
            "subject.kind: must be RESIDENT_ID or UNIFIED_SOCIAL_CREDIT_CODE",
        ),
        (RESIDENT, "", "subject.id: resident ID must be 18 characters, got 0"),
        (RESIDENT, "11010519491231002", "subject.id: resident ID must be 18 characters, got 17"),
        (
            RESIDENT,
            "110105194912310021X",
            "subject.id: resident ID must be 18 characters, got 19",
        ),
        (
            RESIDENT,
            "1101A519491231002X",
            "subject.id: resident ID character 5 is 'A', must be a digit",
        ),
        (
            RESIDENT,
            "１10105194912310021",  # full-width digit one
            "subject.id: resident ID character 1 is '１', must be a digit",
        ),
        (
            RESIDENT,
            "11010519491231002Y",
            "subject.id: resident ID character 18 is 'Y', must be a digit or 'X'",
        ),
        (
            RESIDENT,
            "010105194912310021",
            "subject.id: region code (characters 1-6) is not valid, its first digit must be 1-8",
        ),
        (
            RESIDENT,
            "910105194912310021",
            "subject.id: region code (characters 1-6) is not valid, its first digit must be 1-8",
        ),
        (RESIDENT, "110105199913310021", "subject.id: birth date (characters 7-14) is not a date"),
        (RESIDENT, "110105199902290021", "subject.id: birth date (characters 7-14) is not a date"),
        (RESIDENT, "110105189912310021", "subject.id: birth date (characters 7-14) is before 1900"),
        (RESIDENT, "110105194912310021", "subject.id: check character is '1', expected 'X'"),
        (RESIDENT, "11010519491231003X", "subject.id: check character is 'X', expected '8'"),
        (
            USCC,
            "91350100M000100Y4",
            "subject.id: unified social credit code must be 18 characters, got 17",
        ),
        (
            USCC,
            "91350100I000100Y43",
            "subject.id: unified social credit code character 9 is 'I', "
            "must be 0-9 or A-Y except I, O, S, V, Z",
        ),
        (
            USCC,
            "91350100M000100Y4-",
            "subject.id: unified social credit code character 18 is '-', "
            "must be 0-9 or A-Y except I, O, S, V, Z",
        ),
        (
            USCC,
            "913501A0M000100Y43",
            "subject.id: unified social credit code character 7 is 'A', "
            "the region code (characters 3-8) must be digits",
        ),
        (USCC, "91350100M000100Y44", "subject.id: check character is '4', expected '3'"),
        (USCC, "911100007109288310", "subject.id: check character is '0', expected '4'"),
    ],
)
def test_invalid_identifiers_are_refused_naming_the_problem(
    kind: Kind, identifier: str, message: str
) -> None:
    assert refusal(kind, identifier) == message


def test_birth_date_in_the_future_is_refused() -> None:
    tomorrow = dt.datetime.now(CHINA).date() + dt.timedelta(days=1)
    identifier = make_resident_id("110105", tomorrow, 1)
    assert refusal(RESIDENT, identifier) == (
        "subject.id: birth date (characters 7-14) is in the future"
    )


def test_generators_reproduce_published_identifiers() -> None:
    assert make_resident_id("110105", dt.date(1949, 12, 31), 2) == "11010519491231002X"
    assert make_uscc(region="350100", organisation="M000100Y4") == "91350100M000100Y43"
    assert make_uscc("9", "1", region="110000", organisation="710928831") == "911100007109288314"


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"region": "0101", "birth": dt.date(1990, 1, 1), "sequence": 1}, "region must be"),
        ({"region": "110105", "birth": dt.date(1990, 1, 1), "sequence": 1000}, "sequence must"),
    ],
)
def test_resident_id_generator_rejects_bad_parts(
    arguments: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        make_resident_id(**arguments)  # type: ignore[arg-type]


def test_uscc_generator_rejects_bad_parts() -> None:
    with pytest.raises(ValueError, match="region must be 6 digits"):
        make_uscc(region="35010A", organisation="M000100Y4")
    with pytest.raises(ValueError, match="organisation must be 9 characters"):
        make_uscc(region="350100", organisation="M000100O4")


# --- properties ---------------------------------------------------------------------------------

regions = st.from_regex(r"[1-8][0-9]{5}", fullmatch=True)
births = st.dates(dt.date(1900, 1, 1), dt.datetime.now(CHINA).date())
resident_ids = st.builds(make_resident_id, regions, births, st.integers(0, 999))
uscc_characters = st.sampled_from(USCC_ALPHABET)
usccs = st.builds(
    make_uscc,
    uscc_characters,
    uscc_characters,
    region=st.from_regex(r"[0-9]{6}", fullmatch=True),
    organisation=st.text(USCC_ALPHABET, min_size=9, max_size=9),
)


def with_one_change(identifier: str, position: int, replacement: str) -> str:
    return identifier[:position] + replacement + identifier[position + 1 :]


@given(resident_ids, st.integers(0, 17), st.sampled_from("0123456789X"))
def test_generated_resident_ids_validate_and_any_one_change_is_refused(
    identifier: str, position: int, replacement: str
) -> None:
    assert validate_subject(common_pb2.Subject(kind=RESIDENT, id=identifier)).id == identifier
    if identifier[position] != replacement:
        changed = with_one_change(identifier, position, replacement)
        assert refusal(RESIDENT, changed).startswith("subject.id: ")


@given(usccs, st.integers(0, 17), uscc_characters)
def test_generated_usccs_validate_and_any_one_change_is_refused(
    identifier: str, position: int, replacement: str
) -> None:
    assert validate_subject(common_pb2.Subject(kind=USCC, id=identifier)).id == identifier
    if identifier[position] != replacement:
        changed = with_one_change(identifier, position, replacement)
        assert refusal(USCC, changed).startswith("subject.id: ")
