"""Subject identifiers: validation of what callers send, and synthetic valid ones for demos.

Two kinds, both 18 characters with a check character over the first 17:
- resident ID (公民身份号码, GB 11643-1999): 6-digit region code, birth date YYYYMMDD,
  3-digit sequence, check character by ISO 7064 MOD 11-2 ('0'-'9' or 'X');
- unified social credit code (统一社会信用代码, GB 32100-2015): registration authority,
  category, 6-digit region code, 9-character organisation code, check character mod 31,
  over the alphabet 0-9 A-Y without I, O, S, V, Z.

A valid identifier comes back normalised to upper case, so the same subject always has the
same spelling in the audit log (whose subject look-ups hash the identifier).
"""

from __future__ import annotations

import datetime as dt
import operator

from audit.events import SubjectId
from exchange.errors import ExchangeError, invalid_argument
from exchange.v1 import common_pb2

RESIDENT_ID = "RESIDENT_ID"
UNIFIED_SOCIAL_CREDIT_CODE = "UNIFIED_SOCIAL_CREDIT_CODE"
LENGTH = 18

_DIGITS = "0123456789"
_RESIDENT_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RESIDENT_CHECK = "10X98765432"  # indexed by weighted sum mod 11
_EARLIEST_BIRTH = dt.date(1900, 1, 1)
# Birth dates are Beijing dates: "not in the future" is judged in China Standard Time.
_CHINA = dt.timezone(dt.timedelta(hours=8))

_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # value = index
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def validate_subject(subject: common_pb2.Subject) -> SubjectId:
    """The subject as a normalised SubjectId; raises invalid_argument naming what is wrong."""
    if subject.kind == common_pb2.RESIDENT_ID:
        return SubjectId(RESIDENT_ID, _valid_resident_id(subject.id))
    if subject.kind == common_pb2.UNIFIED_SOCIAL_CREDIT_CODE:
        return SubjectId(UNIFIED_SOCIAL_CREDIT_CODE, _valid_uscc(subject.id))
    raise invalid_argument("subject.kind: must be RESIDENT_ID or UNIFIED_SOCIAL_CREDIT_CODE")


def make_resident_id(region: str, birth: dt.date, sequence: int) -> str:
    """A valid resident ID for `region` (6 digits), `birth` and `sequence` (0-999, odd = male)."""
    if len(region) != 6 or not _all_in(region, _DIGITS) or region[0] not in "12345678":
        raise ValueError(f"region must be 6 digits starting with 1-8, got {region!r}")
    if not 0 <= sequence <= 999:
        raise ValueError(f"sequence must be 0-999, got {sequence}")
    body = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return body + _resident_check(body)


def make_uscc(
    registration_authority: str = "9",
    category: str = "1",
    *,
    region: str,
    organisation: str,
) -> str:
    """A valid unified social credit code (default authority 9 = market regulation, category 1
    = company) for `region` (6 digits) and `organisation` (9 characters of the code alphabet).
    """
    body = f"{registration_authority}{category}{region}{organisation}"
    if len(registration_authority) != 1 or len(category) != 1:
        raise ValueError("registration_authority and category are one character each")
    if len(region) != 6 or not _all_in(region, _DIGITS):
        raise ValueError(f"region must be 6 digits, got {region!r}")
    if len(organisation) != 9 or not _all_in(body, _USCC_ALPHABET):
        raise ValueError(f"organisation must be 9 characters of {_USCC_ALPHABET}")
    return body + _uscc_check(body)


# --- resident ID (GB 11643-1999) ----------------------------------------------------------


def _valid_resident_id(raw: str) -> str:
    if len(raw) != LENGTH:
        raise _bad_id(f"resident ID must be {LENGTH} characters, got {len(raw)}")
    value = raw[:17] + "X" if raw[17] == "x" else raw
    body = value[:17]
    if not (body.isascii() and body.isdigit()):  # the common case, checked in C
        for position, char in enumerate(body, start=1):
            if char not in _DIGITS:
                raise _bad_id(f"resident ID character {position} is {char!r}, must be a digit")
    if value[17] not in _DIGITS + "X":
        raise _bad_id(f"resident ID character 18 is {value[17]!r}, must be a digit or 'X'")
    if value[0] not in "12345678":
        raise _bad_id("region code (characters 1-6) is not valid, its first digit must be 1-8")
    _check_birth_date(value[6:14])
    _check_character(value[17], _resident_check(body))
    return value


def _check_birth_date(text: str) -> None:
    try:
        birth = dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise _bad_id("birth date (characters 7-14) is not a date") from None
    if birth < _EARLIEST_BIRTH:
        raise _bad_id("birth date (characters 7-14) is before 1900")
    if birth > dt.datetime.now(_CHINA).date():
        raise _bad_id("birth date (characters 7-14) is in the future")


def _resident_check(body: str) -> str:
    total = sum(map(operator.mul, map(int, body), _RESIDENT_WEIGHTS))
    return _RESIDENT_CHECK[total % 11]


# --- unified social credit code (GB 32100-2015) ---------------------------------------------


def _valid_uscc(raw: str) -> str:
    if len(raw) != LENGTH:
        raise _bad_id(f"unified social credit code must be {LENGTH} characters, got {len(raw)}")
    value = "".join(char.upper() if "a" <= char <= "z" else char for char in raw)
    for position, char in enumerate(value, start=1):
        if char not in _USCC_ALPHABET:
            raise _bad_id(
                f"unified social credit code character {position} is {raw[position - 1]!r}, "
                "must be 0-9 or A-Y except I, O, S, V, Z"
            )
    for position, char in enumerate(value[2:8], start=3):
        if char not in _DIGITS:
            raise _bad_id(
                f"unified social credit code character {position} is {char!r}, "
                "the region code (characters 3-8) must be digits"
            )
    _check_character(value[17], _uscc_check(value[:17]))
    return value


def _uscc_check(body: str) -> str:
    total = sum(
        _USCC_ALPHABET.index(char) * weight
        for char, weight in zip(body, _USCC_WEIGHTS, strict=True)
    )
    return _USCC_ALPHABET[(31 - total % 31) % 31]


# --- shared -----------------------------------------------------------------------------------


def _check_character(found: str, expected: str) -> None:
    if found != expected:
        raise _bad_id(f"check character is {found!r}, expected {expected!r}")


def _all_in(text: str, alphabet: str) -> bool:
    return all(char in alphabet for char in text)


def _bad_id(problem: str) -> ExchangeError:
    return invalid_argument(f"subject.id: {problem}")
