"""Synthetic but valid records for the four issuing departments of the demo.

Every identifier passes its check (GB 11643 resident IDs, GB 32100 credit codes); families
are consistent across departments: a child's birth certificate names parents who hold
resident identity records and a marriage certificate. Generated from a fixed seed, so every
run of the demo shows the same people.
"""

from __future__ import annotations

import csv
import json
import random
import sqlite3
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from exchange.subject import make_resident_id, make_uscc

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董潘袁蔡蒋"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华玉萍红玲芬燕彬鑫宇轩浩然子涵欣怡"
ETHNICITIES = ("汉", "汉", "汉", "汉", "汉", "回", "满", "壮", "蒙古", "朝鲜")
REGIONS = {
    "110105": "北京市朝阳区",
    "310104": "上海市徐汇区",
    "330106": "杭州市西湖区",
    "440305": "深圳市南山区",
}
STREETS = ("建国路", "中山路", "人民路", "解放路", "文三路", "科技园路", "淮海中路", "望京街")
HOSPITALS = ("市妇幼保健院", "市第一人民医院", "区妇产医院", "大学附属医院")
SCOPES = ("软件开发；信息技术咨询", "餐饮服务", "货物进出口", "建筑工程施工", "零售：日用百货")
ENTITY_TYPES = ("有限责任公司", "股份有限公司", "个人独资企业")


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    sex: str
    ethnicity: str
    birth: date
    region: str
    address: str


@dataclass(frozen=True)
class Family:
    mother: Person
    father: Person
    child: Person
    married_on: date
    household_number: str


class DemoPopulation:
    """Families (two parents and a child each) and companies, from one seed."""

    def __init__(self, families: int = 1000, companies: int = 1000, seed: int = 20261126) -> None:
        self._rng = random.Random(seed)
        self._sequence = 0
        self._ids: set[str] = set()
        self.families = [self._family(i) for i in range(families)]
        self.companies = [self._company(i) for i in range(companies)]

    def _person(
        self, sex: str, born_from: int, born_to: int, region: str, address: str, surname: str = ""
    ) -> Person:
        rng = self._rng
        birth = date(born_from, 1, 1) + timedelta(days=rng.randrange((born_to - born_from) * 365))
        resident_id = ""
        while not resident_id or resident_id in self._ids:
            self._sequence += 1
            # The order code's last digit is odd for men and even for women (GB 11643).
            order = (self._sequence % 500) * 2 + (1 if sex == "男" else 0)
            resident_id = make_resident_id(region, birth, order)
        self._ids.add(resident_id)
        name = (surname or rng.choice(SURNAMES)) + "".join(rng.choices(GIVEN, k=rng.choice((1, 2))))
        return Person(
            id=resident_id,
            name=name,
            sex=sex,
            ethnicity=rng.choice(ETHNICITIES),
            birth=birth,
            region=region,
            address=address,
        )

    def _family(self, index: int) -> Family:
        rng = self._rng
        region = rng.choice(list(REGIONS))
        address = f"{REGIONS[region]}{rng.choice(STREETS)}{rng.randrange(1, 300)}号"
        mother = self._person("女", 1980, 1998, region, address)
        father = self._person("男", 1978, 1996, region, address)
        sex = rng.choice(("男", "女"))
        child = self._person(sex, 2015, 2025, region, address, surname=father.name[0])
        married_on = max(mother.birth, father.birth) + timedelta(days=365 * 22 + index % 900)
        return Family(mother, father, child, married_on, f"{region}{100000 + index:06d}")

    def _company(self, index: int) -> dict[str, str]:
        rng = self._rng
        region = rng.choice(list(REGIONS))
        established = date(2000, 1, 1) + timedelta(days=rng.randrange(9000))
        representative = rng.choice(SURNAMES) + rng.choice(GIVEN)
        return {
            "uscc": make_uscc(region=region, organisation=f"{100000000 + index * 7919:09d}"),
            "name": f"{REGIONS[region][:2]}{rng.choice(GIVEN)}{rng.choice(GIVEN)}科技{index}号公司",
            "legal_representative": representative,
            "registered_capital": f"{rng.choice((50, 100, 500, 1000, 5000))}万元人民币",
            "established_on": established.isoformat(),
            "business_scope": rng.choice(SCOPES),
            "address": f"{REGIONS[region]}{rng.choice(STREETS)}{rng.randrange(1, 300)}号",
            "entity_type": rng.choice(ENTITY_TYPES),
            "licence_number": f"L{region}{index:08d}",
            "issued_on": established.isoformat(),
        }

    def people(self) -> list[tuple[Person, Family, str]]:
        """Every person with their family and relationship to the household head."""
        return [
            (person, family, relationship)
            for family in self.families
            for person, relationship in (
                (family.father, "户主"),
                (family.mother, "配偶"),
                (family.child, "子女"),
            )
        ]


def write_public_security_db(population: DemoPopulation, path: Path) -> None:
    """PSB: resident identity cards and household registrations, in a SQLite database."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE residents (id_number TEXT PRIMARY KEY, card_number TEXT, full_name TEXT,"
            " sex TEXT, ethnicity TEXT, birth_date TEXT, address TEXT, issuing_authority TEXT,"
            " issued_on TEXT, valid_until TEXT)"
        )
        db.execute(
            "CREATE TABLE households (id_number TEXT PRIMARY KEY, household_number TEXT,"
            " relationship TEXT, registered_address TEXT, registered_on TEXT)"
        )
        for person, family, relationship in population.people():
            issued = max(person.birth + timedelta(days=365 * 16), date(2016, 3, 1))
            db.execute(
                "INSERT INTO residents VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    person.id,
                    f"C{person.id[-8:]}",
                    person.name,
                    person.sex,
                    person.ethnicity,
                    person.birth.isoformat(),
                    person.address,
                    f"{REGIONS[person.region]}公安分局",
                    issued.isoformat(),
                    (issued + timedelta(days=365 * 20)).isoformat(),
                ),
            )
            db.execute(
                "INSERT INTO households VALUES (?,?,?,?,?)",
                (
                    person.id,
                    family.household_number,
                    relationship,
                    person.address,
                    family.married_on.isoformat(),
                ),
            )


def write_health_csv(population: DemoPopulation, path: Path) -> None:
    """Health commission: birth medical certificates (出生医学证明), one CSV row per child."""
    columns = (
        "child_id",
        "certificate_number",
        "child_name",
        "sex",
        "birth_date",
        "birth_place",
        "mother_name",
        "mother_id",
        "father_name",
        "father_id",
        "issued_on",
    )
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        for index, family in enumerate(population.families):
            child = family.child
            writer.writerow(
                (
                    child.id,
                    f"Q{child.birth:%y}{index:08d}",
                    child.name,
                    child.sex,
                    child.birth.isoformat(),
                    f"{REGIONS[child.region]}{HOSPITALS[index % len(HOSPITALS)]}",
                    family.mother.name,
                    family.mother.id,
                    family.father.name,
                    family.father.id,
                    (child.birth + timedelta(days=3)).isoformat(),
                )
            )


def write_civil_affairs_db(population: DemoPopulation, path: Path) -> None:
    """Civil affairs: marriage certificates, one row per spouse, in a SQLite database."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE marriage_certificates (holder_id TEXT PRIMARY KEY, certificate_number"
            " TEXT, holder_name TEXT, spouse_name TEXT, spouse_id TEXT, registered_on TEXT,"
            " registry_office TEXT)"
        )
        for index, family in enumerate(population.families):
            office = f"{REGIONS[family.mother.region]}民政局婚姻登记处"
            number = f"J{family.mother.region}-{family.married_on:%Y}-{index:06d}"
            for holder, spouse in ((family.mother, family.father), (family.father, family.mother)):
                db.execute(
                    "INSERT INTO marriage_certificates VALUES (?,?,?,?,?,?,?)",
                    (
                        holder.id,
                        number,
                        holder.name,
                        spouse.name,
                        spouse.id,
                        family.married_on.isoformat(),
                        office,
                    ),
                )


def write_market_regulation_json(population: DemoPopulation, path: Path) -> None:
    """Market regulation: business licences (营业执照), a JSON array."""
    path.write_text(json.dumps(population.companies, ensure_ascii=False, indent=1), "utf-8")
